"""Tests of ddpm_plus.data: digits, image folders, 🤗 datasets, transforms and grids (all offline)."""

import logging
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_plus.data import (
    DIGITS_SPLIT_SIZES,
    ImageTransform,
    digits_split_indices,
    digits_uint8,
    from_uint8,
    load_image_dataset,
    make_grid,
    to_uint8,
)


def assert_on_8bit_grid(images: torch.Tensor) -> None:
    assert images.dtype == torch.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert torch.equal(from_uint8(to_uint8(images)), images)


def write_image(path: Path, size: tuple[int, int], seed: int, mode: str = "RGB") -> np.ndarray:
    """Write a random image of ``size`` (width, height) and return its pixels."""
    channels = (3,) if mode == "RGB" else ()
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], *channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def stack(dataset: torch.utils.data.Dataset) -> torch.Tensor:
    return torch.stack([dataset[index] for index in range(len(dataset))])


# ------------------------------------------------------------------------------------------------ 8-bit helpers


def test_uint8_round_trip_is_exact() -> None:
    pixels = torch.arange(256, dtype=torch.uint8)
    floats = from_uint8(pixels)
    assert floats[0] == -1.0 and floats[-1] == 1.0
    assert torch.equal(to_uint8(floats), pixels)
    assert torch.equal(from_uint8(to_uint8(floats)), floats)


def test_to_uint8_clamps_and_rounds() -> None:
    assert to_uint8(torch.tensor([-3.0, 3.0, 0.0])).tolist() == [0, 255, 128]


def test_from_uint8_rejects_floats() -> None:
    with pytest.raises(ValueError, match="uint8"):
        from_uint8(torch.zeros(3))


# ------------------------------------------------------------------------------------------------ digits


@pytest.mark.parametrize("resolution", [16, 32])
def test_digits_shapes_and_values(resolution: int) -> None:
    dataset = load_image_dataset(resolution=resolution)
    assert len(dataset) == DIGITS_SPLIT_SIZES["train"] == 1500
    images = stack(dataset)
    assert images.shape == (1500, 1, resolution, resolution)
    assert_on_8bit_grid(images)
    assert images.min() == -1.0 and images.max() == 1.0


def test_embedded_digits_are_scikit_learns() -> None:
    """The shipped file holds scikit-learn's `load_digits` images, in its order (scikit-learn is a test dependency)."""
    from sklearn.datasets import load_digits

    expected = np.rint(load_digits().images * 255 / 16).astype(np.uint8)
    assert np.array_equal(digits_uint8("train", 8), expected[digits_split_indices("train")])
    assert np.array_equal(digits_uint8("test", 8), expected[digits_split_indices("test")])


def test_digits_uint8_values() -> None:
    train = digits_uint8("train", resolution=8)
    assert train.dtype == np.uint8 and train.shape == (1500, 8, 8)
    assert set(np.unique(train)) <= {round(value * 255 / 16) for value in range(17)}


def test_digits_split_is_fixed_and_disjoint() -> None:
    train, test = digits_split_indices("train"), digits_split_indices("test")
    assert (len(train), len(test)) == (DIGITS_SPLIT_SIZES["train"], DIGITS_SPLIT_SIZES["test"]) == (1500, 297)
    assert set(train).isdisjoint(test) and sorted(train + test) == list(range(1797))
    assert (train, test) == (digits_split_indices("train"), digits_split_indices("test"))
    # The split depends on nothing but the image indices: pin it, and the pixels of the test images.
    assert test[:8] == [9, 39, 46, 49, 50, 51, 53, 55]
    assert np.array_equal(digits_uint8("test", 8), digits_uint8("test", 8))
    assert int(digits_uint8("test", 8).astype(np.int64).sum()) == 1_479_943


def test_digits_three_channels_repeat_grey() -> None:
    image = load_image_dataset("digits", num_channels=3, split="test")[0]
    assert image.shape == (3, 16, 16)
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])


def test_digits_reject_unknown_split_and_held_out_fraction() -> None:
    with pytest.raises(ValueError, match="'train' or 'test'"):
        load_image_dataset(split="validation")
    with pytest.raises(ValueError, match="held_out_fraction"):
        load_image_dataset(held_out_fraction=0.1)


def test_random_flip_is_reproducible_and_flips() -> None:
    plain = load_image_dataset(split="test")
    flipping = load_image_dataset(split="test", random_flip=True)
    torch.manual_seed(0)
    first = stack(flipping)
    torch.manual_seed(0)
    assert torch.equal(stack(flipping), first)
    reference = stack(plain)
    flipped = (first == reference.flip(-1)).flatten(1).all(1) & ~(first == reference).flatten(1).all(1)
    unchanged = (first == reference).flatten(1).all(1)
    assert bool((flipped | unchanged).all())
    assert 0.3 < flipped.float().mean() < 0.7


# ------------------------------------------------------------------------------------------------ transforms


def test_transform_resizes_shorter_side_and_center_crops() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 80, 3), dtype=np.uint8))
    output = ImageTransform(resolution=20, num_channels=3)(image)
    assert output.shape == (3, 20, 20)
    assert_on_8bit_grid(output)
    assert ImageTransform(resolution=20, num_channels=1)(image).shape == (1, 20, 20)


def test_transform_keeps_pixels_at_native_resolution() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    output = ImageTransform(resolution=16, num_channels=3)(Image.fromarray(pixels))
    assert torch.equal(to_uint8(output), torch.from_numpy(pixels).permute(2, 0, 1))


def test_transform_random_crop_and_flip_follow_the_generator() -> None:
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (16, 32), dtype=np.uint8))
    transform = ImageTransform(resolution=16, num_channels=1, center_crop=False, random_flip=True)
    outputs = [transform(image, torch.Generator().manual_seed(seed)) for seed in range(8)]
    repeated = [transform(image, torch.Generator().manual_seed(seed)) for seed in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(outputs, repeated, strict=True))
    assert len({output.numpy().tobytes() for output in outputs}) > 1


def test_transform_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="num_channels"):
        ImageTransform(resolution=16, num_channels=2)
    with pytest.raises(ValueError, match="resolution"):
        ImageTransform(resolution=0, num_channels=3)


# ------------------------------------------------------------------------------------------------ image folders


def test_image_folder_skips_corrupt_files_and_logs_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_image(tmp_path / "a.png", (16, 16), seed=0)
    write_image(tmp_path / "nested" / "b.png", (24, 16), seed=1)
    write_image(tmp_path / "nested" / "deeper" / "c.jpg", (16, 32), seed=2)
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    (tmp_path / "notes.txt").write_text("ignored")
    with caplog.at_level(logging.WARNING, logger="ddpm_plus.data"):
        dataset = load_image_dataset(tmp_path, resolution=16)
    assert len(dataset) == 3
    assert "Skipped 1 unreadable image file(s)" in caplog.text and "broken.png" in caplog.text
    images = stack(dataset)
    assert images.shape == (3, 3, 16, 16)
    assert_on_8bit_grid(images)


def test_image_folder_replaces_an_image_that_breaks_after_listing(tmp_path: Path, caplog) -> None:
    pixels = write_image(tmp_path / "a.png", (16, 16), seed=0)
    write_image(tmp_path / "b.png", (16, 16), seed=1)
    dataset = load_image_dataset(tmp_path, resolution=16)
    (tmp_path / "b.png").write_bytes(b"corrupted since")
    with caplog.at_level(logging.WARNING, logger="ddpm_plus.data"):
        image = dataset[1]
    assert "b.png" in caplog.text
    assert torch.equal(to_uint8(image), torch.from_numpy(pixels).permute(2, 0, 1))


def test_image_folder_errors_name_the_directory(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty"):
        load_image_dataset(empty)
    only_corrupt = tmp_path / "corrupt"
    only_corrupt.mkdir()
    (only_corrupt / "x.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="No readable image.*corrupt"):
        load_image_dataset(only_corrupt)


def test_image_folder_held_out_split(tmp_path: Path) -> None:
    for index in range(10):
        write_image(tmp_path / f"{index}.png", (8, 8), seed=index, mode="L")
    train = load_image_dataset(tmp_path, resolution=8, num_channels=1, held_out_fraction=0.2)
    test = load_image_dataset(tmp_path, resolution=8, num_channels=1, split="test", held_out_fraction=0.2)
    assert (len(train), len(test)) == (8, 2)
    assert set(train.files).isdisjoint(test.files)
    assert load_image_dataset(tmp_path, resolution=8, split="test", held_out_fraction=0.2).files == test.files
    with pytest.raises(ValueError, match="no named splits"):
        load_image_dataset(tmp_path, split="test")


# ------------------------------------------------------------------------------------------------ 🤗 datasets


def make_hf_dataset(count: int) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)) for _ in range(count)]
    return datasets.Dataset.from_dict(
        {"label": list(range(count)), "picture": images},
        features=datasets.Features({"label": datasets.Value("int64"), "picture": datasets.Image()}),
    )


def test_saved_dataset_auto_detects_the_image_column(tmp_path: Path) -> None:
    make_hf_dataset(4).save_to_disk(tmp_path / "saved")
    dataset = load_image_dataset(str(tmp_path / "saved"), resolution=16, num_channels=1)
    assert dataset.image_column == "picture"
    images = stack(dataset)
    assert images.shape == (4, 1, 16, 16)
    assert_on_8bit_grid(images)


def test_saved_dataset_dict_selects_the_split(tmp_path: Path) -> None:
    splits = datasets.DatasetDict({"train": make_hf_dataset(3), "test": make_hf_dataset(2)})
    splits.save_to_disk(tmp_path / "dict")
    assert len(load_image_dataset(tmp_path / "dict", split="test", image_column="picture")) == 2
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_image_dataset(tmp_path / "dict", split="validation")


def test_dataset_image_column_errors(tmp_path: Path) -> None:
    make_hf_dataset(2).save_to_disk(tmp_path / "saved")
    with pytest.raises(ValueError, match="'pixels' is not a column"):
        load_image_dataset(tmp_path / "saved", image_column="pixels")
    datasets.Dataset.from_dict({"label": [0, 1]}).save_to_disk(tmp_path / "no_images")
    with pytest.raises(ValueError, match="No image column"):
        load_image_dataset(tmp_path / "no_images")


def test_column_of_file_paths_is_read_as_images(tmp_path: Path) -> None:
    paths = [str(tmp_path / f"{index}.png") for index in range(2)]
    for index, path in enumerate(paths):
        write_image(Path(path), (16, 16), seed=index)
    datasets.Dataset.from_dict({"image": paths}).save_to_disk(tmp_path / "paths")
    assert stack(load_image_dataset(tmp_path / "paths", resolution=16)).shape == (2, 3, 16, 16)


def test_other_sources_go_to_load_dataset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = []

    def fake_load_dataset(name: str, split: str, cache_dir: str | None) -> datasets.Dataset:
        calls.append((name, split, cache_dir))
        return make_hf_dataset(3)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dataset = load_image_dataset("someone/pictures", resolution=8, split="train[:3]", cache_dir=str(tmp_path))
    assert calls == [("someone/pictures", "train[:3]", str(tmp_path))]
    assert dataset[2].shape == (3, 8, 8)
    with pytest.raises(ValueError, match="held_out_fraction"):
        load_image_dataset("someone/pictures", held_out_fraction=0.1)


# ------------------------------------------------------------------------------------------------ grids


def test_make_grid_size_and_modes() -> None:
    grid = make_grid(torch.rand(10, 3, 8, 8) * 2 - 1, nrow=4, padding=2)
    assert grid.mode == "RGB" and grid.size == (4 * 10 + 2, 3 * 10 + 2)
    grey = make_grid(np.zeros((3, 8, 8), dtype=np.uint8), nrow=8, padding=1)
    assert grey.mode == "L" and grey.size == (3 * 9 + 1, 9 + 1)


def test_make_grid_places_images_inside_padding() -> None:
    images = torch.full((2, 1, 4, 4), -1.0)
    grid = np.asarray(make_grid(images, nrow=2, padding=1, pad_value=255))
    assert grid[0].tolist() == [255] * 11
    assert (grid[1:5, 1:5] == 0).all() and (grid[1:5, 6:10] == 0).all() and (grid[1:5, 5] == 255).all()


def test_make_grid_accepts_pil_images_and_rejects_bad_input() -> None:
    assert make_grid([Image.new("RGB", (5, 5))] * 3, nrow=3, padding=0).size == (15, 5)
    with pytest.raises(ValueError, match="uint8"):
        make_grid(np.zeros((2, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        make_grid(torch.zeros(2, 2, 4, 4))
