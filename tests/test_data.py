"""Tests of ddpm_plus.data: digits, image folders, 🤗 datasets, transforms and grids (all offline)."""

import logging
import struct
import zlib
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_plus.data import (
    DIGITS_SPLIT_SIZES,
    ImageTransform,
    UnsupportedImageError,
    digits_split_indices,
    digits_uint8,
    from_uint8,
    load_image_dataset,
    make_grid,
    stored_image_shape,
    to_8bit_image,
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


# ------------------------------------------------------------------------------------------------ image modes


def png_16bit_rgb(pixels: np.ndarray) -> bytes:
    """A PNG with 16 bits per RGB channel (PIL cannot write one; it reads it as "RGB", keeping the high byte)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def write_high_depth_images(directory: Path) -> dict[str, str]:
    """16-bit, 32-bit and float images, as the loader once flattened them (to white or black); file -> mode."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 65536, (8, 8), dtype=np.uint16)).save(directory / "grey16.png")
    Image.fromarray(rng.random((8, 8), dtype=np.float32)).save(directory / "float.tif")
    Image.fromarray(rng.integers(0, 2**20, (8, 8), dtype=np.int32)).save(directory / "int32.tif")
    (directory / "rgb16.png").write_bytes(png_16bit_rgb(rng.integers(0, 65536, (8, 8, 3), dtype=np.uint16)))
    return {"grey16.png": "'I;16'", "float.tif": "'F'", "int32.tif": "'I'", "rgb16.png": "RGB;16B"}


def test_high_depth_images_are_refused_naming_file_and_mode(tmp_path: Path) -> None:
    expected = write_high_depth_images(tmp_path / "deep")
    with pytest.raises(UnsupportedImageError) as error:
        load_image_dataset(tmp_path / "deep", resolution=8)
    message = str(error.value)
    assert "\n" not in message and "convert it to 8 bits" in message
    for name, mode in expected.items():
        assert f"{name}: " in message and mode in message
    for name in expected:  # one at a time, through the transform of an opened file too
        with Image.open(tmp_path / "deep" / name) as image, pytest.raises(UnsupportedImageError):
            ImageTransform(resolution=8, num_channels=1)(image)


def test_unsupported_images_are_an_error_while_corrupt_ones_are_skipped(tmp_path: Path) -> None:
    write_image(tmp_path / "good.png", (8, 8), seed=0)
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    Image.fromarray(np.full((8, 8), 300, dtype=np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(UnsupportedImageError, match=r"1 image file\(s\).*deep\.png: mode 'I;16'") as error:
        load_image_dataset(tmp_path, resolution=8)
    assert "broken.png" not in str(error.value)


def opaque_and_transparent(mode: str) -> tuple[Image.Image, Image.Image]:
    """An image of `mode` with alpha 255 everywhere, and the same with one half-transparent pixel."""
    rng = np.random.default_rng(3)
    colour = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    alpha = np.full((8, 8, 1), 255, dtype=np.uint8)
    opaque = Image.fromarray(np.concatenate([colour, alpha], axis=-1), "RGBA")
    alpha[2, 5] = 128
    transparent = Image.fromarray(np.concatenate([colour, alpha], axis=-1), "RGBA")
    if mode == "LA":
        return opaque.convert("LA"), transparent.convert("LA")
    if mode == "PA":
        return opaque.convert("PA"), transparent.convert("PA")
    return opaque, transparent


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA"])
def test_alpha_is_dropped_when_opaque_and_transparent_images_are_refused(mode: str, tmp_path: Path) -> None:
    opaque, transparent = opaque_and_transparent(mode)
    expected = opaque.convert("RGB") if mode != "LA" else opaque.convert("L").convert("RGB")
    assert np.array_equal(np.asarray(to_8bit_image(opaque, 3)), np.asarray(expected))
    with pytest.raises(UnsupportedImageError, match="alpha down to 128"):
        to_8bit_image(transparent, 3)
    savable = "RGBA" if mode == "PA" else mode  # PNG has no PA mode
    transparent.convert(savable).save(tmp_path / "see-through.png")
    opaque.convert(savable).save(tmp_path / "solid.png")
    with pytest.raises(UnsupportedImageError, match="see-through.png: it has transparent pixels") as error:
        load_image_dataset(tmp_path, resolution=8)
    assert "solid.png" not in str(error.value)


def test_transparency_entries_of_palette_and_grey_images(tmp_path: Path) -> None:
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255])
    palette.putpixel((1, 1), 1)
    palette.save(tmp_path / "unused_index.png", transparency=2)  # no pixel uses the transparent index
    grey = Image.new("L", (8, 8), 7)
    grey.putpixel((0, 0), 9)
    grey.save(tmp_path / "grey_trns.png", transparency=7)
    with Image.open(tmp_path / "unused_index.png") as image:
        assert np.array_equal(np.asarray(to_8bit_image(image, 3)), np.asarray(palette.convert("RGB")))
    with Image.open(tmp_path / "grey_trns.png") as image, pytest.raises(UnsupportedImageError, match="transparent"):
        to_8bit_image(image, 1)
    palette.save(tmp_path / "used_index.png", transparency=0)
    with Image.open(tmp_path / "used_index.png") as image, pytest.raises(UnsupportedImageError, match="transparent"):
        to_8bit_image(image, 3)


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBX", "YCbCr", "CMYK"])
def test_8bit_modes_convert_exactly(mode: str, tmp_path: Path) -> None:
    """Each mode becomes PIL's own conversion, exactly; grey becomes colour by repeating the level; files (TIFF,
    lossless) give the same pixels as the image in memory."""
    rgb = Image.fromarray(np.random.default_rng(4).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    image = rgb.convert(mode) if mode != "P" else rgb.quantize(16)
    transform = ImageTransform(resolution=8, num_channels=3)
    expected_rgb = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
    assert torch.equal(to_uint8(transform(image)), torch.from_numpy(expected_rgb.copy()))
    expected_grey = np.asarray(image.convert("L"))[None]
    assert torch.equal(to_uint8(ImageTransform(8, 1)(image)), torch.from_numpy(expected_grey.copy()))
    if mode in ("L", "1"):
        assert (expected_rgb == expected_grey).all()
    if mode not in ("RGBX", "YCbCr"):  # TIFF has no RGBX, and some Pillow versions cannot decode a YCbCr TIFF
        image.save(tmp_path / "image.tif")
        assert torch.equal(stack(load_image_dataset(tmp_path, resolution=8))[0], transform(image))


def test_cmyk_jpeg_is_read(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 8), (10, 20, 30, 40)).save(tmp_path / "print.jpg", quality=100)
    pixels = to_uint8(stack(load_image_dataset(tmp_path, resolution=8))[0])
    assert (pixels[:, 0, 0] - torch.tensor([207, 198, 190])).abs().max() <= 2  # (255 - C)(255 - K) / 255, ...


@pytest.mark.parametrize("mode", ["LAB", "HSV", "RGBa"])
def test_other_modes_are_refused(mode: str) -> None:
    with pytest.raises(UnsupportedImageError, match=f"mode '{mode}' is not one that is read"):
        to_8bit_image(Image.new("RGB", (4, 4)).convert(mode), 3)


def test_a_file_as_source_says_what_is_expected(tmp_path: Path) -> None:
    write_image(tmp_path / "one.png", (8, 8), seed=0)
    with pytest.raises(ValueError, match="one.png is a file; expected an image folder, a directory written by"):
        load_image_dataset(tmp_path / "one.png")


def test_an_image_over_pils_limit_is_refused_as_too_large_naming_the_limit(tmp_path: Path, monkeypatch) -> None:
    """Valid, but over PIL's decompression-bomb limit (2 x MAX_IMAGE_PIXELS): too large, not unreadable."""
    write_image(tmp_path / "small.png", (8, 8), seed=0)
    write_image(tmp_path / "large.png", (16, 16), seed=1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 256 pixels exceed 2 x 100
    message = r"large.png: it is too large for PIL .*over 2 x PIL.Image.MAX_IMAGE_PIXELS = 200 pixels.*raise PIL"
    with pytest.raises(UnsupportedImageError, match=message):
        load_image_dataset(tmp_path, resolution=8)
    with pytest.raises(UnsupportedImageError, match=message):
        stored_image_shape(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # raised as the message says
    assert len(load_image_dataset(tmp_path, resolution=8)) == 2


def test_a_dataset_row_over_pils_limit_is_named_as_too_large(tmp_path: Path, monkeypatch) -> None:
    make_hf_dataset(2).save_to_disk(tmp_path / "saved")
    dataset = load_image_dataset(tmp_path / "saved", resolution=8)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the rows are 20x20
    with pytest.raises(UnsupportedImageError, match="row 0 of column 'picture': it is too large for PIL"):
        dataset[0]


def test_an_image_folder_of_mixed_sizes_has_no_stored_shape(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", (8, 8), seed=0)
    write_image(tmp_path / "b.png", (8, 8), seed=1, mode="L")
    assert stored_image_shape(tmp_path) == (8, 8, 3)  # the channels of the first image
    write_image(tmp_path / "c.png", (12, 8), seed=2)
    with pytest.raises(ValueError, match=r"holds images of different sizes \(.*a.png is 8x8, .*c.png is 8x12\)"):
        stored_image_shape(tmp_path)


def test_a_path_that_does_not_exist_is_no_dataset_name(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", True)
    missing = tmp_path / "no" / "such" / "images"
    with pytest.raises(ValueError, match=f"The data source {missing} is no folder, and no 🤗 dataset of that name"):
        load_image_dataset(missing)


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


def test_dataset_row_without_an_8bit_form_is_named(tmp_path: Path) -> None:
    grey16 = Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16))
    rows = datasets.Dataset.from_dict({"image": [make_hf_dataset(1)[0]["picture"], grey16]})
    rows.cast_column("image", datasets.Image()).save_to_disk(tmp_path / "saved")
    dataset = load_image_dataset(tmp_path / "saved", resolution=8)
    assert dataset[0].shape == (3, 8, 8)
    with pytest.raises(UnsupportedImageError, match="row 1 of column 'image': mode 'I;16'"):
        dataset[1]


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
