"""Sample quality from image features: FID, Inception Score, KID and precision/recall, computed by torch-fidelity.

The features come from any `torch.nn.Module` that maps uint8 images (B, C, H, W) to features (B, D), or to a pair
(features, logits) whose logits give the Inception Score. The default, `InceptionFeatures`, is torch-fidelity's
InceptionV3 with the TensorFlow FID weights (the network of the FID and IS numbers in papers): 2048 pool features
and the 1008 unbiased logits, images resized to 299x299 as TensorFlow did, grey images repeated to RGB. The
formulas are torch-fidelity's (`fid_statistics_to_metric`, `isc_features_to_metric`, `kid_features_to_metric`,
`prc_features_to_metric`); this module only feeds them. Needs the extra `ddpm_plus[eval]`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from ddpm_plus.extras import import_extra
from ddpm_plus.image_sources import archive_members
from ddpm_plus.sharding import Processes, chunks_of, map_chunks
from ddpm_plus.utils import atomic_path

INCEPTION = "inception"
INCEPTION_VALUES_PER_IMAGE = 2048 + 1008  # pool features and unbiased logits
INCEPTION_NAME = "inception-v3-compat"  # torch-fidelity's name for the TensorFlow-compatible InceptionV3
STATISTICS_KEYS = ("mu", "sigma")
IS_SPLITS = 10
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
PR_NEIGHBORHOOD = 3


def torch_fidelity() -> ModuleType:
    return import_extra("torch_fidelity", "eval")


class InceptionFeatures(torch.nn.Module):
    """torch-fidelity's InceptionV3 with the TensorFlow FID weights: uint8 images (B, 1 or 3, H, W) → the 2048 pool
    features and the 1008 unbiased logits. The weights are downloaded once into torch's hub cache, unless
    `weights_path` names a local copy (torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`)."""

    def __init__(self, weights_path: str | None = None):
        super().__init__()
        self.inception = torch_fidelity().FeatureExtractorInceptionV3(
            INCEPTION_NAME, ["2048", "logits_unbiased"], feature_extractor_weights_path=weights_path
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        features, logits = self.inception(images)
        return features, logits


def load_feature_extractor(
    spec: str, weights_path: str | None = None, option: str = "--feature-extractor"
) -> torch.nn.Module:
    """The feature extractor of `spec` (the command-line `option`): "inception" (`InceptionFeatures`), or
    `module.path:name` where `name` is a `torch.nn.Module`, a subclass of it (built without arguments) or a function
    that returns one."""
    if spec == INCEPTION:
        return InceptionFeatures(weights_path)
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{option} must be 'inception' or 'module.path:name', got {spec!r}.")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{option} {spec}: {error}") from None
    extractor = found if isinstance(found, torch.nn.Module) else found() if callable(found) else None
    if not isinstance(extractor, torch.nn.Module):
        raise ValueError(f"{option} {spec} is not a torch.nn.Module, nor a class or function making one.")
    return extractor


def extractor_fingerprint(spec: str, extractor: torch.nn.Module) -> str:
    """What identifies the features of an extractor: its spec and a hash of its parameters and buffers (so cached
    statistics are not reused after its weights change)."""
    digest = hashlib.sha256(spec.encode())
    for name, tensor in extractor.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"{spec}:{digest.hexdigest()[:16]}"


@dataclass
class Features:
    """Features (N, D) of a set of images, and the logits (N, K) of extractors that give them (for the IS)."""

    features: torch.Tensor
    logits: torch.Tensor | None = None

    @classmethod
    def concat(cls, parts: list[Features]) -> Features:
        logits = [part.logits for part in parts]
        return cls(
            torch.cat([part.features for part in parts]),
            None if any(value is None for value in logits) else torch.cat(logits),
        )


def extract_features(extractor: torch.nn.Module, images: torch.Tensor) -> Features:
    """`extractor`'s features of uint8 images (B, C, H, W) on its device, as float32 (and float32 logits)."""
    device = next(iter(extractor.parameters()), torch.empty(0)).device
    with torch.no_grad():
        output = extractor(images.to(device))
    features, logits = output if isinstance(output, (tuple, list)) else (output, None)
    if features.ndim != 2:
        raise ValueError(f"the feature extractor must return (batch, dim) features, got shape {tuple(features.shape)}.")
    return Features(features.float().cpu(), None if logits is None else logits.float().cpu())


def sharded_features(
    extractor: torch.nn.Module,
    count: int,
    read: Callable[[range], torch.Tensor],
    processes: Processes,
    batch_size: int,
    desc: str,
) -> Features:
    """The features of images 0..count-1, on every process: each process takes its share of the chunks of
    `batch_size` consecutive images, `read(chunk)` gives a chunk's uint8 images (B, C, H, W), and the chunks'
    features are gathered in image order."""
    parts = map_chunks(
        processes,
        chunks_of(count, batch_size),
        lambda chunk: extract_features(extractor, read(chunk)),
        Features,
        desc=desc,
    )
    return Features.concat(parts)


@dataclass
class FeatureStatistics:
    """Mean and covariance (float64) of the features of `count` images of `shape` from the extractor `extractor`,
    and the features themselves when kept (KID and precision/recall need them)."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    features: np.ndarray | None = None
    shape: tuple[int, int, int] | None = None
    extractor: str | None = None

    @classmethod
    def from_features(
        cls, features: torch.Tensor, shape: tuple[int, int, int] | None = None, extractor: str | None = None
    ) -> FeatureStatistics:
        statistics = torch_fidelity().metric_fid.fid_features_to_statistics(features.double())
        return cls(statistics["mu"], statistics["sigma"], len(features), features.float().numpy(), shape, extractor)

    def save(self, path: Path) -> None:
        """Write an `.npz` file (atomically) with `mu`, `sigma`, `features` and a JSON `info` entry."""
        info = {"count": self.count, "shape": self.shape, "extractor": self.extractor}
        arrays = {"mu": self.mu, "sigma": self.sigma, "info": np.array(json.dumps(info))}
        if self.features is not None:
            arrays["features"] = self.features
        with atomic_path(path) as temporary, open(temporary, "xb") as file:
            np.savez(file, **arrays)

    @classmethod
    def load(cls, path: Path) -> FeatureStatistics:
        """Read a file written by `save`, or any `.npz` with `mu` and `sigma` (count, shape, extractor unknown); a
        `ValueError` naming the file when it cannot be read or `mu` (D,) and `sigma` (D, D) do not agree."""
        try:
            with np.load(path) as archive:
                info = json.loads(str(archive["info"])) if "info" in archive else {}
                features = archive["features"] if "features" in archive else None
                mu, sigma = archive["mu"].astype(np.float64), archive["sigma"].astype(np.float64)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path}: the feature statistics cannot be read ({error}).") from None
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
            raise ValueError(
                f"{path}: mu has shape {mu.shape} and sigma {sigma.shape}; statistics of D features need mu of shape "
                "(D,) and sigma of shape (D, D)."
            )
        shape = info.get("shape")
        return cls(
            mu, sigma, info.get("count", 0), features, None if shape is None else tuple(shape), info.get("extractor")
        )


def read_cached_statistics(path: Path) -> FeatureStatistics | None:
    """The statistics cached in `path`, or None when there are none or they cannot be read (a damaged file is
    computed again, never used)."""
    if not path.is_file():
        return None
    try:
        return FeatureStatistics.load(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        warnings.warn(f"{path} cannot be read ({error}): the statistics are computed again.", stacklevel=2)
        return None


def is_statistics_file(path: Path) -> bool:
    """Whether `path` is an `.npz` file of feature statistics (it holds `mu` and `sigma`)."""
    return path.suffix == ".npz" and path.is_file() and set(STATISTICS_KEYS) <= archive_members(path)


def frechet_distance(first: FeatureStatistics, second: FeatureStatistics) -> float:
    """‖μ₁ - μ₂‖² + tr(Σ₁ + Σ₂ - 2 (Σ₁ Σ₂)^½), by torch-fidelity (`fid_statistics_to_metric`), in float64."""
    metric = torch_fidelity().metric_fid.fid_statistics_to_metric(
        {"mu": first.mu, "sigma": first.sigma}, {"mu": second.mu, "sigma": second.sigma}, verbose=False
    )
    return metric["frechet_inception_distance"]


def quality_metrics(
    samples: FeatureStatistics, logits: torch.Tensor | None, reference: FeatureStatistics, metrics: tuple[str, ...]
) -> dict[str, Any]:
    """The requested metrics ("fid", "is", "kid", "pr") of the samples against the reference, where the inputs
    allow them: FID always; the IS from the samples' `logits` (extractors that give them); KID and precision/recall
    when both sides kept their features."""
    fidelity = torch_fidelity()
    results: dict[str, Any] = {}
    if "fid" in metrics:
        results["fid"] = frechet_distance(samples, reference)
    if "is" in metrics and logits is not None:
        score = fidelity.metric_isc.isc_features_to_metric(logits, splits=min(IS_SPLITS, len(logits)))
        results["inception_score"] = {"mean": score["inception_score_mean"], "std": score["inception_score_std"]}
    if samples.features is None or reference.features is None:
        return results
    sample_features, reference_features = torch.from_numpy(samples.features), torch.from_numpy(reference.features)
    if "kid" in metrics:
        subset = min(KID_SUBSET_SIZE, len(sample_features), len(reference_features))
        kid = fidelity.metric_kid.kid_features_to_metric(
            sample_features, reference_features, kid_subsets=KID_SUBSETS, kid_subset_size=subset, verbose=False
        )
        results["kid"] = {"mean": kid["kernel_inception_distance_mean"], "std": kid["kernel_inception_distance_std"]}
    if "pr" in metrics and min(len(sample_features), len(reference_features)) > PR_NEIGHBORHOOD:
        pr = fidelity.metric_prc.prc_features_to_metric(
            sample_features, reference_features, prc_neighborhood=PR_NEIGHBORHOOD, save_cpu_ram=True, verbose=False
        )
        results["precision"], results["recall"] = pr["precision"], pr["recall"]
    return results
