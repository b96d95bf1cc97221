"""`ddpm-plus fid`: FID, Inception Score, KID and precision/recall of samples against reference images.

The arguments, their checks (the output locations included) and the usage text are in `ddpm_plus.cli`, which
imports this module only to run the command. Both sides are checked (image size and channels, at least 2 images,
uint8 archives) before any feature is computed. Under `accelerate launch` every process computes the features of its
share of the images, in chunks of `--batch-size` consecutive images (one network batch each), and the features are
gathered in image order, so the numbers do not depend on the number of processes. The reference's statistics and
features are cached in `--cache-dir`, keyed by the images (their files, or the 🤗 dataset's fingerprint), their size
and the feature extractor's weights, so a large reference is read once.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import re
from pathlib import Path
from typing import Any

import torch

from ddpm_plus.fid import (
    INCEPTION,
    INCEPTION_VALUES_PER_IMAGE,
    FeatureStatistics,
    extractor_fingerprint,
    is_statistics_file,
    load_feature_extractor,
    quality_metrics,
    read_cached_statistics,
    sharded_features,
)
from ddpm_plus.image_sources import ArchiveImages, ImageSet, Shape, describe_shape, open_images
from ddpm_plus.resources import FLOAT32_BYTES, check_memory, images_bytes
from ddpm_plus.sharding import Processes, default_device, launched_processes
from ddpm_plus.utils import write_json

Side = ImageSet | FeatureStatistics
MIN_IMAGES = 2  # the covariance of the features needs two


def run(args: argparse.Namespace) -> int:
    """Check both sides, then compute the features (sharded) and, on the main process, the metrics."""
    args.device = default_device(args.device)
    samples = open_side(args.samples, args.samples_split)
    reference = open_side(args.reference, args.reference_split)
    shape = common_shape(samples, reference)
    for side, option in ((samples, "--samples"), (reference, "--reference")):
        prepare_side(side, shape, option)
    check_request(samples, reference, shape, args.feature_extractor)
    with launched_processes(cpu=args.device == "cpu", num_threads=args.num_threads) as processes:
        extractor = load_feature_extractor(args.feature_extractor, args.feature_extractor_weights)
        extractor = extractor.to(processes.device(args.device)).eval()
        fingerprint = extractor_fingerprint(args.feature_extractor, extractor)
        reference_statistics, origin = statistics_of_reference(
            reference, shape, extractor, fingerprint, processes, args
        )
        sample_statistics, logits = statistics_of_samples(samples, shape, extractor, fingerprint, processes, args)
        if processes.is_main:
            results = quality_metrics(sample_statistics, logits, reference_statistics, tuple(args.metrics))
            print(summary_line(results, sample_statistics.count, reference_statistics.count, args.feature_extractor))
            print(f"reference statistics: {origin}")
            if args.output is not None:
                write_json(
                    args.output, report(args, results, sample_statistics, reference_statistics, shape, fingerprint)
                )
                print(f"wrote {args.output}")
    return 0


# --------------------------------------------------------------------------------------------- the two sides


def open_side(location: str, split: str) -> Side:
    """Saved statistics (an `.npz` with `mu` and `sigma`), or images (see `ddpm_plus.image_sources`)."""
    path = Path(location)
    if is_statistics_file(path):
        return FeatureStatistics.load(path)
    return open_images(location, split)


def common_shape(samples: Side, reference: Side) -> Shape:
    """The (height, width, channels) that both sides share, or a `ValueError` when they differ."""
    known = {option: side.shape for side, option in ((samples, "--samples"), (reference, "--reference"))}
    if known["--samples"] and known["--reference"] and known["--samples"] != known["--reference"]:
        raise ValueError(
            f"the reference images are {describe_shape(known['--reference'])}, but the samples are "
            f"{describe_shape(known['--samples'])}: FID compares images of one size and colour mode."
        )
    shape = known["--samples"] or known["--reference"]
    if shape is None:
        raise ValueError("neither --samples nor --reference has an image size (the digits take the other side's).")
    return shape


def prepare_side(side: Side, shape: Shape, option: str) -> None:
    """Open a side's images at `shape`, and raise a `ValueError` when it has fewer than 2 images."""
    if isinstance(side, FeatureStatistics):
        if not side.count:  # statistics files of other tools do not say how many images
            return
    else:
        side.bind(shape)
    if side.count < MIN_IMAGES:
        raise ValueError(
            f"{option} holds {side.count} image{'' if side.count == 1 else 's'}; the covariance of the features needs "
            f"at least {MIN_IMAGES}."
        )


def check_request(samples: Side, reference: Side, shape: Shape, feature_extractor: str) -> None:
    """Refuse, before any feature is computed, sides whose features (gathered on the CPU: Inception's pool features
    and logits, at least one value per image for other extractors) and archived images cannot fit in memory."""
    images = [side for side in (samples, reference) if not isinstance(side, FeatureStatistics)]
    count = sum(side.count for side in images)
    archived = sum(side.count for side in images if isinstance(side, ArchiveImages))
    values = INCEPTION_VALUES_PER_IMAGE if feature_extractor == INCEPTION else 1
    needed = count * values * FLOAT32_BYTES + images_bytes(archived, shape[2], shape[0], shape[1])
    check_memory(needed, f"the features of {count} images", "cpu")


# --------------------------------------------------------------------------------------------- statistics


def statistics_of_reference(
    reference: Side,
    shape: Shape,
    extractor: torch.nn.Module,
    fingerprint: str,
    processes: Processes,
    args: argparse.Namespace,
) -> tuple[FeatureStatistics, str]:
    """The reference's statistics and where they came from: a statistics file, the cache, or its images (then
    cached by the main process)."""
    if isinstance(reference, FeatureStatistics):
        check_extractor(reference, fingerprint, "--reference")
        return reference, f"read from {args.reference}"
    cache = cache_path(args.cache_dir, args.reference, reference, shape, fingerprint)
    cached = read_cached_statistics(cache)
    if cached is not None:
        return cached, f"read from the cache, {cache}"
    features = sharded_features(
        extractor, reference.count, reference.read, processes, args.batch_size, "reference features"
    )
    statistics = FeatureStatistics.from_features(features.features, shape, fingerprint)
    if processes.is_main:
        statistics.save(cache)
    return statistics, f"computed and cached in {cache}"


def statistics_of_samples(
    samples: Side,
    shape: Shape,
    extractor: torch.nn.Module,
    fingerprint: str,
    processes: Processes,
    args: argparse.Namespace,
) -> tuple[FeatureStatistics, torch.Tensor | None]:
    """The samples' statistics, and their logits where the extractor gives them (for the Inception Score)."""
    if isinstance(samples, FeatureStatistics):
        check_extractor(samples, fingerprint, "--samples")
        return samples, None
    features = sharded_features(extractor, samples.count, samples.read, processes, args.batch_size, "sample features")
    return FeatureStatistics.from_features(features.features, shape, fingerprint), features.logits


def check_extractor(statistics: FeatureStatistics, fingerprint: str, option: str) -> None:
    if statistics.extractor is not None and statistics.extractor != fingerprint:
        raise ValueError(
            f"{option} holds statistics of the feature extractor {statistics.extractor}, not of {fingerprint}."
        )


def cache_path(cache_dir: Path, location: str, images: ImageSet, shape: Shape, fingerprint: str) -> Path:
    """The cache file of a reference: named after it, keyed by its images, their shape and the extractor."""
    key = hashlib.sha256("\n".join([images.fingerprint(), str(shape), fingerprint]).encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", location.strip("/"))[-60:]
    return cache_dir / f"{name}-{key}.npz"


# --------------------------------------------------------------------------------------------- report


def summary_line(results: dict[str, Any], num_samples: int, num_reference: int, extractor: str) -> str:
    parts = []
    if "fid" in results:
        parts.append(f"FID {results['fid']:.4f}")
    if "inception_score" in results:
        parts.append(f"IS {results['inception_score']['mean']:.3f} ± {results['inception_score']['std']:.3f}")
    if "kid" in results:
        parts.append(f"KID {results['kid']['mean']:.5f} ± {results['kid']['std']:.5f}")
    if "precision" in results:
        parts.append(f"precision {results['precision']:.4f}, recall {results['recall']:.4f}")
    return f"{' | '.join(parts)} ({num_samples} samples, {num_reference} reference images, features: {extractor})"


def report(
    args: argparse.Namespace,
    results: dict[str, Any],
    samples: FeatureStatistics,
    reference: FeatureStatistics,
    shape: Shape,
    fingerprint: str,
) -> dict[str, Any]:
    return {
        "metrics": results,
        "samples": {"source": args.samples, "split": args.samples_split, "num_images": samples.count},
        "reference": {"source": args.reference, "split": args.reference_split, "num_images": reference.count},
        "image_shape": list(shape),
        "feature_extractor": fingerprint,
        "versions": {name: importlib.metadata.version(name) for name in ("ddpm_plus", "torch", "torch-fidelity")},
    }
