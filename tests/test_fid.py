"""`ddpm-plus fid`: the Fréchet distance against its closed form, the whole path with a small feature extractor
(metrics, cache, statistics files, 1 against 2 processes), the default InceptionV3 of torch-fidelity built up to its
weights' download, and bad input refused with one line before any feature is computed. They need the extra
`[eval]` (marker `eval`, `nox -s eval`); the checks that come before it are in test_cli.py."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.feature_extractors import TinyFeatures
from helpers.launch import run_module
from PIL import Image

from ddpm_plus.cli import main
from ddpm_plus.fid import FeatureStatistics, frechet_distance

TINY = "helpers.feature_extractors:TinyFeatures"
SIZE = 8

pytestmark = pytest.mark.eval


def closed_form_frechet(mu1, sigma1, mu2, sigma2) -> float:
    """‖μ₁-μ₂‖² + tr Σ₁ + tr Σ₂ - 2 tr (Σ₁^½ Σ₂ Σ₁^½)^½, with symmetric square roots from eigendecompositions."""

    def sqrt_psd(matrix):
        values, vectors = np.linalg.eigh(matrix)
        return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T

    root = sqrt_psd(sigma1)
    cross = np.trace(sqrt_psd(root @ sigma2 @ root))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * cross)


def random_covariance(rng, dim) -> np.ndarray:
    factor = rng.standard_normal((dim, dim))
    return factor @ factor.T / dim + 0.1 * np.eye(dim)


def test_frechet_distance_is_the_closed_form_for_two_gaussians():
    rng = np.random.default_rng(0)
    for dim in (1, 4, 64):
        mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
        sigma1, sigma2 = random_covariance(rng, dim), random_covariance(rng, dim)
        expected = closed_form_frechet(mu1, sigma1, mu2, sigma2)
        computed = frechet_distance(FeatureStatistics(mu1, sigma1, 0), FeatureStatistics(mu2, sigma2, 0))
        assert abs(computed - expected) <= 1e-6 * abs(expected), (dim, computed, expected)
    same = FeatureStatistics(mu1, sigma1, 0)
    assert abs(frechet_distance(same, same)) <= 1e-9 * np.trace(sigma1)


# --------------------------------------------------------------------------------------------- the whole path


def write_archive(path: Path, images: np.ndarray) -> Path:
    np.savez(path, arr_0=images)
    return path


def write_folder(path: Path, images: np.ndarray) -> Path:
    path.mkdir()
    for index, image in enumerate(images):
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(path / f"{index:03d}.png")
    return path


@pytest.fixture
def sides(tmp_path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """Samples (an archive of 12 images) and a reference (a folder of 20 darker images), 8x8 RGB."""
    rng = np.random.default_rng(0)
    samples = rng.integers(0, 256, (12, SIZE, SIZE, 3), dtype=np.uint8)
    reference = rng.integers(0, 200, (20, SIZE, SIZE, 3), dtype=np.uint8)
    return (
        write_archive(tmp_path / "samples.npz", samples),
        write_folder(tmp_path / "ref", reference),
        samples,
        reference,
    )


def fid_argv(samples: Path, reference: Path, tmp_path: Path, *extra: str) -> list[str]:
    options = ["--feature-extractor", TINY, "--cache-dir", str(tmp_path / "cache"), "--batch-size", "5", *extra]
    return ["fid", "--samples", str(samples), "--reference", str(reference), *options]


def tiny_features(images: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    with torch.no_grad():
        features, logits = TinyFeatures()(torch.from_numpy(images).permute(0, 3, 1, 2))
    return features.double().numpy(), logits


def test_the_whole_path_with_a_small_feature_extractor(sides, tmp_path, capsys):
    samples, reference, sample_images, reference_images = sides
    output = tmp_path / "results.json"
    assert main(fid_argv(samples, reference, tmp_path, "--output", str(output))) == 0
    results = json.loads(output.read_text())
    metrics = results["metrics"]

    sample_features, logits = tiny_features(sample_images)
    reference_features, _ = tiny_features(reference_images)
    expected = closed_form_frechet(
        sample_features.mean(0), np.cov(sample_features, rowvar=False),
        reference_features.mean(0), np.cov(reference_features, rowvar=False),
    )  # fmt: skip
    assert metrics["fid"] == pytest.approx(expected, rel=1e-5)
    import torch_fidelity

    score = torch_fidelity.metric_isc.isc_features_to_metric(logits, splits=10)
    assert metrics["inception_score"]["mean"] == pytest.approx(score["inception_score_mean"], rel=1e-5)
    assert np.isfinite(metrics["kid"]["mean"]) and metrics["kid"]["std"] >= 0
    assert 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1
    assert results["samples"]["num_images"] == 12 and results["reference"]["num_images"] == 20
    assert results["image_shape"] == [SIZE, SIZE, 3] and results["feature_extractor"].startswith(TINY)
    first_out = capsys.readouterr().out
    assert "FID " in first_out and "computed and cached in" in first_out

    (cached,) = (tmp_path / "cache").iterdir()
    assert main(fid_argv(samples, reference, tmp_path, "--output", str(output))) == 0
    assert "read from the cache" in capsys.readouterr().out
    assert json.loads(output.read_text())["metrics"] == metrics

    assert main(fid_argv(samples, cached, tmp_path, "--output", str(output))) == 0  # statistics file as reference
    assert json.loads(output.read_text())["metrics"] == metrics


def test_the_cache_is_not_reused_for_other_images(sides, tmp_path, capsys):
    samples, reference, _, _ = sides
    assert main(fid_argv(samples, reference, tmp_path)) == 0
    Image.new("RGB", (SIZE, SIZE), "white").save(reference / "020.png")
    capsys.readouterr()
    assert main(fid_argv(samples, reference, tmp_path)) == 0
    assert "computed and cached in" in capsys.readouterr().out
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_a_damaged_cache_is_computed_again_not_used(sides, tmp_path, capsys):
    samples, reference, _, _ = sides
    output = tmp_path / "results.json"
    assert main(fid_argv(samples, reference, tmp_path, "--output", str(output))) == 0
    metrics = json.loads(output.read_text())["metrics"]
    (cached,) = (tmp_path / "cache").iterdir()
    cached.write_bytes(cached.read_bytes()[:100])  # truncated
    capsys.readouterr()
    with pytest.warns(UserWarning, match="cannot be read"):
        assert main(fid_argv(samples, reference, tmp_path, "--output", str(output))) == 0
    assert "computed and cached in" in capsys.readouterr().out
    assert json.loads(output.read_text())["metrics"] == metrics


def test_grey_images_and_digits_as_reference(tmp_path):
    grey = np.random.default_rng(1).integers(0, 256, (6, SIZE, SIZE, 1), dtype=np.uint8)
    samples = write_archive(tmp_path / "grey.npz", grey)
    output = tmp_path / "results.json"
    argv = ["fid", "--samples", str(samples), "--reference", "digits", "--reference-split", "test"]
    argv += ["--feature-extractor", "helpers.feature_extractors:tiny_grey_features", "--cache-dir", str(tmp_path / "c")]
    assert main([*argv, "--output", str(output)]) == 0
    results = json.loads(output.read_text())
    assert results["reference"]["num_images"] == 297 and results["image_shape"] == [SIZE, SIZE, 1]


def test_two_cpu_processes_give_the_same_numbers_as_one(sides, tmp_path):
    samples, reference, _, _ = sides
    numbers = []
    for processes in (1, 2):
        output = tmp_path / f"results-{processes}.json"
        argv = fid_argv(samples, reference, tmp_path / str(processes), "--output", str(output))
        result = run_module("ddpm_plus.cli", *argv, processes=processes)
        assert result.returncode == 0, result.stderr[-3000:]
        numbers.append(json.loads(output.read_text())["metrics"])
    assert numbers[0] == numbers[1]


# --------------------------------------------------------------------------------------------- the default path


def test_the_default_path_builds_torch_fidelity_inception_mocking_only_the_download(tmp_path, monkeypatch):
    """The weights' download returns the freshly built network's own (random) weights: everything else is real."""
    rng = np.random.default_rng(2)
    samples = write_archive(tmp_path / "samples.npz", rng.integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8))
    reference = write_folder(tmp_path / "ref", rng.integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8))
    downloads = []
    import torch_fidelity

    def fake_download(url, *args, **kwargs):
        downloads.append(url)
        return sys._getframe(1).f_locals["self"].state_dict()  # the InceptionV3 being built

    module = torch_fidelity.feature_extractor_inceptionv3
    monkeypatch.setattr(module, "load_state_dict_from_url", fake_download)
    output = tmp_path / "results.json"
    argv = ["fid", "--samples", str(samples), "--reference", str(reference), "--cache-dir", str(tmp_path / "cache")]
    assert main([*argv, "--metrics", "fid,is", "--batch-size", "16", "--output", str(output)]) == 0
    assert downloads == [module.URL_INCEPTION_V3]
    results = json.loads(output.read_text())
    assert set(results["metrics"]) == {"fid", "inception_score"} and results["metrics"]["fid"] >= 0
    assert results["feature_extractor"].startswith("inception:")


# --------------------------------------------------------------------------------------------- bad input


@pytest.fixture
def no_feature_work(monkeypatch):
    """Fail the test if a feature extractor is built."""

    def refuse(*args, **kwargs):
        raise AssertionError("a feature extractor was built before the input was checked")

    monkeypatch.setattr("ddpm_plus.cli_fid.load_feature_extractor", refuse)


@pytest.mark.usefixtures("no_feature_work")
@pytest.mark.parametrize(
    ("make_samples", "make_reference", "message"),
    [
        (
            lambda tmp: write_archive(tmp / "s.npz", np.zeros((4, 8, 8, 3), np.uint8)),
            lambda tmp: write_folder(tmp / "ref", np.zeros((4, 16, 16, 3), np.uint8)),
            "the reference images are 16x16 with 3 channels, but the samples are 8x8 with 3 channels",
        ),
        (
            lambda tmp: write_archive(tmp / "s.npz", np.zeros((4, 8, 8, 3), np.uint8)),
            lambda tmp: write_folder(tmp / "ref", np.zeros((4, 8, 8, 1), np.uint8)),
            "the reference images are 8x8 with 1 channel, but the samples are 8x8 with 3 channels",
        ),
        (
            lambda tmp: write_archive(tmp / "s.npz", np.zeros((1, 8, 8, 3), np.uint8)),
            lambda tmp: write_folder(tmp / "ref", np.zeros((4, 8, 8, 3), np.uint8)),
            "--samples holds 1 image; the covariance of the features needs at least 2",
        ),
        (
            lambda tmp: write_archive(tmp / "s.npz", np.zeros((4, 8, 8, 3), np.uint8)),
            lambda tmp: write_folder(tmp / "ref", np.zeros((1, 8, 8, 3), np.uint8)),
            "--reference holds 1 image; the covariance of the features needs at least 2",
        ),
        (
            lambda tmp: write_archive(tmp / "s.npz", np.zeros((4, 8, 8, 3), np.float32)),
            lambda tmp: write_folder(tmp / "ref", np.zeros((4, 8, 8, 3), np.uint8)),
            "arr_0 must be uint8 images (N, H, W, C) with C = 1 or 3, got float32 of shape (4, 8, 8, 3)",
        ),
        (
            lambda tmp: write_archive(tmp / "s.npz", np.zeros((4, 3, 8, 8), np.uint8)),
            lambda tmp: write_folder(tmp / "ref", np.zeros((4, 8, 8, 3), np.uint8)),
            "arr_0 must be uint8 images (N, H, W, C) with C = 1 or 3, got uint8 of shape (4, 3, 8, 8)",
        ),
    ],
)
def test_bad_input_is_one_line_before_any_feature_work(tmp_path, capsys, make_samples, make_reference, message):
    samples, reference = make_samples(tmp_path), make_reference(tmp_path)
    status = main(["fid", "--samples", str(samples), "--reference", str(reference), "--cache-dir", str(tmp_path)])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1 and message in error, error
