"""Evaluation during and after training: a sample grid of the pipeline, an unbiased estimate of the held-out
bits/dim (eq. 5) with its standard error, as the record that `bpd.json` holds, and its figure (`ddpm_plus.plots`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ddpm_plus.bound_estimation import estimate_bound, pilot_terms
from ddpm_plus.data import make_grid
from ddpm_plus.pipeline_ddpm_plus import DDPMPlusPipeline
from ddpm_plus.plots import bound_figure, figure_image
from ddpm_plus.scheduling_ddpm_plus import DDPMPlusScheduler

if TYPE_CHECKING:
    from accelerate import Accelerator
    from diffusers import UNet2DModel
    from matplotlib.figure import Figure

    from ddpm_plus.bound_estimation import BoundEstimate, PilotTerms

MIN_GRID_SIDE = 256  # sample grids of small images are enlarged (nearest neighbour) to at least this many pixels
PILOT_IMAGES = 16  # held-out images whose terms on the pilot timesteps set the strata of the bits/dim estimator


def evaluation_pipeline(
    unet: UNet2DModel, noise_scheduler: DDPMPlusScheduler, progress: str | None = None
) -> DDPMPlusPipeline:
    """The pipeline of `unet` with a copy of the training scheduler; its sampling shows a progress bar described by
    `progress` (none when None)."""
    pipeline = DDPMPlusPipeline(unet=unet, scheduler=DDPMPlusScheduler.from_config(noise_scheduler.config))
    pipeline.set_progress_bar_config(disable=progress is None, desc=progress, leave=False)
    return pipeline


def sample_grid(
    pipeline: DDPMPlusPipeline, *, num_images: int, num_inference_steps: int, seed: int, device: torch.device
) -> Image.Image:
    """A square-ish grid of `num_images` samples drawn with a generator on `device` seeded with `seed`, enlarged to
    at least MIN_GRID_SIDE pixels."""
    generator = torch.Generator(device=device).manual_seed(seed)
    images = pipeline(
        batch_size=num_images, generator=generator, num_inference_steps=num_inference_steps, output_type="pt"
    ).images
    grid = make_grid(images * 2 - 1, nrow=math.ceil(math.sqrt(num_images)))
    scale = max(1, math.ceil(MIN_GRID_SIDE / min(grid.size)))
    return grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)


def heldout_bpd(
    unet: UNet2DModel,
    images: torch.Tensor,
    noise_scheduler: DDPMPlusScheduler,
    *,
    num_strata: int,
    samples_per_stratum: int,
    max_batch_size: int,
    seed: int,
    progress: bool = False,
) -> tuple[BoundEstimate, PilotTerms]:
    """Unbiased estimate of the held-out bits/dim (eq. 5), stratified over timesteps with the profile of a pilot
    measurement on the first PILOT_IMAGES images; returns the estimate and the pilot measurement (with progress
    bars when `progress`)."""
    common = {"max_batch_size": max_batch_size, "progress": progress}
    pilot = pilot_terms(
        unet, images[:PILOT_IMAGES], noise_scheduler, generator=torch.Generator().manual_seed(seed), **common
    )
    estimate = estimate_bound(
        unet,
        images,
        noise_scheduler,
        num_strata=num_strata,
        samples_per_stratum=samples_per_stratum,
        profile=pilot.profile(),
        generator=torch.Generator().manual_seed(seed + 1),
        **common,
    )
    return estimate, pilot


def bpd_record(
    estimate: BoundEstimate, *, step: int, split: str, weights: str, num_strata: int, samples_per_stratum: int
) -> dict[str, Any]:
    """What `bpd.json` records: the held-out bits/dim at `step` with its standard error and 95% interval, its prior
    and decoder terms, where it comes from (`split`, the "ema" or "raw" `weights`) and how it was estimated."""
    low, high = estimate.mean_interval(0.95)
    return {
        "step": step,
        "bits_per_dim": estimate.mean_bpd,
        "standard_error": estimate.mean_standard_error,
        "confidence_interval_95": [low, high],
        "prior_bpd": estimate.prior_bpd.mean().item(),
        "decoder_bpd": estimate.decoder_bpd.mean().item(),
        "num_images": len(estimate.total_bpd),
        "split": split,
        "weights": weights,
        "estimator": "ddpm_plus.estimate_bound (stratified importance sampling over timesteps)",
        "num_strata": num_strata,
        "samples_per_stratum": samples_per_stratum,
        "network_evaluations": estimate.num_evaluations,
    }


def heldout_bound_figure(estimate: BoundEstimate, pilot: PilotTerms, *, run_name: str, step: int) -> Figure:
    """The figure of the held-out estimate (`ddpm_plus.plots.bound_figure`): the sampled terms with the pilot
    measurement, and the rate–distortion curve per stratum; titled with the run and the step."""
    return bound_figure(estimate, pilot=pilot, model_name=f"{run_name}, step {step}, held-out")


def log_figure(accelerator: Accelerator, name: str, figure: Figure, step: int) -> None:
    """Log a matplotlib figure, rendered by its canvas, to the trackers that take images (TensorBoard)."""
    log_image(accelerator, name, figure_image(figure), step)


def log_image(accelerator: Accelerator, name: str, image: Image.Image, step: int) -> None:
    """Log `image` to the trackers that take images (TensorBoard)."""
    pixels = np.asarray(image.convert("RGB"))[None]
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({name: pixels}, step=step, dataformats="NHWC")
