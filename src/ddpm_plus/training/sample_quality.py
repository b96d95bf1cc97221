"""Sample quality during training (`--eval_fid_every N`): the FID of samples of the evaluation (EMA) network against
the statistics of the training images, computed by torch-fidelity through `ddpm_plus.fid`.

Every process makes its share of the samples and of the reference features, in chunks of `--eval_batch_size`
consecutive images, and the features are gathered in image order (`ddpm_plus.sharding`), so the FID does not
depend on the number of processes. Sample i starts from the noise of `seed + i` at every evaluation, so the FIDs
of one run differ by the network only. The reference statistics are computed once, before training, and kept in
`--output_dir` (`fid_reference.npz`) for resumed runs.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ddpm_plus.fid import (
    FeatureStatistics,
    extractor_fingerprint,
    frechet_distance,
    load_feature_extractor,
    read_cached_statistics,
    sharded_features,
)
from ddpm_plus.image_sources import read_uint8
from ddpm_plus.sharding import Processes, sample_images
from ddpm_plus.training.launch import log_on_main_process

if TYPE_CHECKING:
    from accelerate import Accelerator

    from ddpm_plus.pipeline_ddpm_plus import DDPMPlusPipeline

FID_REFERENCE_FILE = "fid_reference.npz"
FID_RECORD_FILE = "fid.json"


@dataclass
class TrainingFid:
    """What each FID evaluation of a run needs: the feature extractor on this process's device, the statistics of
    the training images, and how many samples to draw with which seed and steps."""

    extractor: torch.nn.Module
    fingerprint: str
    reference: FeatureStatistics
    processes: Processes
    num_samples: int
    batch_size: int
    num_inference_steps: int
    seed: int
    feature_extractor: str  # the --fid_feature_extractor spec

    def __call__(self, pipeline: DDPMPlusPipeline) -> float:
        """The FID of `num_samples` samples of `pipeline` against the training images (a collective call: every
        process makes its share)."""

        def samples_of(chunk: range) -> torch.Tensor:
            samples = sample_images(
                pipeline, chunk, seed=self.seed, num_inference_steps=self.num_inference_steps, output_type="pt"
            )
            return (samples * 255).round().to(torch.uint8)

        features = sharded_features(
            self.extractor, self.num_samples, samples_of, self.processes, self.batch_size, "FID samples"
        )
        return frechet_distance(FeatureStatistics.from_features(features.features), self.reference)

    def record(self, fid: float, *, step: int, dataset_name: str) -> dict[str, Any]:
        """What `fid.json` and the model card say of an FID: its value and how it was measured."""
        return {
            "step": step,
            "fid": fid,
            "num_samples": self.num_samples,
            "num_inference_steps": self.num_inference_steps,
            "seed": self.seed,
            "reference": f"training images of {dataset_name}",
            "num_reference_images": self.reference.count,
            "feature_extractor": self.feature_extractor,
            "feature_extractor_fingerprint": self.fingerprint,
        }


def prepare_training_fid(
    args: argparse.Namespace,
    reference_set: torch.utils.data.Dataset,
    accelerator: Accelerator,
    *,
    num_inference_steps: int,
) -> TrainingFid:
    """Build the feature extractor (the default InceptionV3 downloads its weights here, before any training) and the
    reference statistics of the first --fid_num_reference training images: read from `fid_reference.npz` in
    --output_dir when it holds those of this extractor, image count and size, else computed by all processes."""
    processes = Processes(accelerator.process_index, accelerator.num_processes, accelerator)
    extractor = load_feature_extractor(
        args.fid_feature_extractor, args.fid_feature_extractor_weights, option="--fid_feature_extractor"
    )
    extractor = extractor.to(accelerator.device).eval()
    fingerprint = extractor_fingerprint(args.fid_feature_extractor, extractor)
    count = len(reference_set) if args.fid_num_reference is None else min(args.fid_num_reference, len(reference_set))
    if count < 2:
        raise ValueError(f"--eval_fid_every needs at least 2 training images for the reference, got {count}.")
    channels, height, width = reference_set[0].shape
    shape = (height, width, channels)
    path = Path(args.output_dir) / FID_REFERENCE_FILE
    reference = _cached_reference(path, count, shape, fingerprint)
    if reference is None:
        features = sharded_features(
            extractor,
            count,
            lambda chunk: read_uint8(reference_set, chunk),
            processes,
            args.eval_batch_size,
            "FID reference",
        )
        reference = FeatureStatistics.from_features(features.features, shape, fingerprint)
        if processes.is_main:
            reference.save(path)
        log_on_main_process(__name__, logging.INFO, f"FID reference: {count} training images, saved to {path}.")
    return TrainingFid(
        extractor,
        fingerprint,
        reference,
        processes,
        num_samples=args.fid_num_samples,
        batch_size=args.eval_batch_size,
        num_inference_steps=num_inference_steps,
        seed=args.seed,
        feature_extractor=args.fid_feature_extractor,
    )


def _cached_reference(path: Path, count: int, shape: tuple[int, ...], fingerprint: str) -> FeatureStatistics | None:
    """The statistics in `path` when they are readable and those of `count` images of `shape` by the extractor
    `fingerprint`."""
    cached = read_cached_statistics(path)
    if cached is None or (cached.count, cached.shape, cached.extractor) != (count, shape, fingerprint):
        return None
    return cached
