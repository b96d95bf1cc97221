"""`ddpm-plus bpd`: bits/dim of a saved DDPM pipeline on a data set, exact or estimated, with a JSON report and a
figure.

The arguments, their checks (the output location included) and the usage text are in `ddpm_plus.cli`, which
imports this module (torch, diffusers) only to run the command; user errors are `ValueError`s, which `cli.main`
prints as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ddpm_plus.bound_estimation import BoundEstimate, PilotTerms, estimate_bound, pilot_terms, student_t_quantile
from ddpm_plus.cli import SAMPLES_PER_STRATUM
from ddpm_plus.likelihood import BoundResult, variational_bound
from ddpm_plus.pipeline_ddpm_plus import image_size
from ddpm_plus.utils import derived_seed, write_json


def run(args: argparse.Namespace) -> int:
    """Run `ddpm-plus bpd` (arguments already checked by `ddpm_plus.cli`); returns the exit status."""
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    unet, scheduler = load_model(args.model, args.device)
    images = load_images(args.data, args.split, unet.config, args.max_images)
    start = time.perf_counter()
    if args.num_timesteps == "full":
        result, pilot = _exact_bound(unet, scheduler, images, args), None
        report = _exact_report(result)
    else:
        pilot = _pilot_terms(unet, scheduler, images, args)
        result = _estimated_bound(unet, scheduler, images, pilot, args)
        report = _estimate_report(result, pilot)
    report["summary"]["seconds"] = round(time.perf_counter() - start, 3)
    report["settings"] = _settings(args, scheduler)
    print(_summary_line(report["summary"]))
    if args.output is not None:
        write_json(args.output, report)
        print(f"wrote {args.output}")
    if args.plot is not None:
        from ddpm_plus.plots import save_bound_figure

        save_bound_figure(result, args.plot, pilot=pilot, model_name=Path(args.model).resolve().name)
        print(f"wrote {args.plot}")
    return 0


def load_model(directory: str | Path, device: str) -> tuple[Any, Any]:
    """The UNet (float32, eval mode, on `device`) and the DDPMPlusScheduler of a saved pipeline directory."""
    from diffusers import UNet2DModel

    from ddpm_plus.scheduling_ddpm_plus import DDPMPlusScheduler

    directory = Path(directory)
    if not (directory / "unet").is_dir() or not (directory / "scheduler").is_dir():
        raise ValueError(f"{directory} is not a saved pipeline directory: it needs unet/ and scheduler/ subfolders.")
    unet = UNet2DModel.from_pretrained(directory, subfolder="unet", torch_dtype=torch.float32).to(device).eval()
    scheduler = DDPMPlusScheduler.from_pretrained(directory, subfolder="scheduler")
    return unet, scheduler


def load_images(source: str, split: str, unet_config: Any, max_images: int | None) -> torch.Tensor:
    """The data set's images (N, C, H, W) at the UNet's (square) size, as float32 on the 8-bit grid."""
    from ddpm_plus.data import load_image_dataset

    height, width = image_size(unet_config.sample_size)
    if height != width:
        raise ValueError(
            f"the model takes {height}x{width} images, but the data sets are loaded as square images "
            "(resized and center-cropped to one side); only square models are supported."
        )
    dataset = load_image_dataset(source, resolution=height, num_channels=unet_config.in_channels, split=split)
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    if count == 0:
        raise ValueError(f"the data set {source!r} (split {split!r}) holds no images.")
    return torch.stack([dataset[index] for index in range(count)])


def image_generators(seed: int, indices: range) -> list[torch.Generator]:
    """One CPU generator per image, seeded with `derived_seed(seed, image index)`."""
    return [torch.Generator().manual_seed(derived_seed(seed, index)) for index in indices]


def _over_image_batches(
    bound: Callable[..., Any], images: torch.Tensor, args: argparse.Namespace, evaluations_per_image: int, desc: str
) -> list[Any]:
    """`bound(batch, generator=..., ...)` on consecutive batches of about `batch_size` network inputs' worth of
    images (at least one image), each image with its own generator (`image_generators`), under a progress bar."""
    per_batch = max(1, args.batch_size // evaluations_per_image)
    parts = []
    with tqdm(total=len(images), desc=desc, unit="img") as bar:
        for start in range(0, len(images), per_batch):
            indices = range(start, min(start + per_batch, len(images)))
            parts.append(
                bound(
                    images[indices.start : indices.stop],
                    generator=image_generators(args.seed, indices),
                    max_batch_size=args.batch_size,
                    clip_denoised=args.clip_denoised,
                    progress=False,
                )
            )
            bar.update(len(indices))
    return parts


def _exact_bound(unet: Any, scheduler: Any, images: torch.Tensor, args: argparse.Namespace) -> BoundResult:
    num_steps = scheduler.config.num_train_timesteps
    exact_bound = functools.partial(variational_bound, unet, scheduler=scheduler)
    return BoundResult.concat(_over_image_batches(exact_bound, images, args, num_steps, "bpd (exact)"))


def _exact_report(result: BoundResult) -> dict[str, Any]:
    summary = {
        **_over_images(result.total_bpd),
        "num_evaluations": result.num_evaluations,
        "mean_prior_bpd": result.prior_bpd.mean().item(),
        "mean_decoder_bpd": result.decoder_bpd.mean().item(),
        "mean_terms_bpd": result.terms_bpd.mean(0).tolist(),
        "mean_rate_bpd": result.rate_bpd().mean(0).tolist(),
        "mean_x0_mse": result.x0_mse.mean(0).tolist(),
    }
    per_image = [
        {"index": index, "bpd": total, "prior_bpd": prior, "decoder_bpd": decoder}
        for index, (total, prior, decoder) in enumerate(
            zip(result.total_bpd.tolist(), result.prior_bpd.tolist(), result.decoder_bpd.tolist(), strict=True)
        )
    ]
    return {"summary": summary, "images": per_image}


def _pilot_terms(unet: Any, scheduler: Any, images: torch.Tensor, args: argparse.Namespace) -> PilotTerms:
    """The pilot measurement that shapes the estimator's proposal, on the first `--pilot-images` images."""
    return pilot_terms(
        unet,
        images[: args.pilot_images],
        scheduler,
        num_timesteps=args.pilot_timesteps,
        generator=torch.Generator().manual_seed(args.seed),
        max_batch_size=args.batch_size,
        clip_denoised=args.clip_denoised,
        progress=False,
    )


def _estimated_bound(
    unet: Any, scheduler: Any, images: torch.Tensor, pilot: PilotTerms, args: argparse.Namespace
) -> BoundEstimate:
    estimated_bound = functools.partial(
        estimate_bound,
        unet,
        scheduler=scheduler,
        num_strata=(args.num_timesteps - 1) // SAMPLES_PER_STRATUM,
        samples_per_stratum=SAMPLES_PER_STRATUM,
        profile=pilot.profile(),
    )
    estimates = _over_image_batches(estimated_bound, images, args, args.num_timesteps, "bpd (estimate)")
    return BoundEstimate.concat(estimates)


def _estimate_report(estimate: BoundEstimate, pilot: PilotTerms) -> dict[str, Any]:
    low, high = estimate.interval(0.95)
    summary = {
        **_over_images(estimate.total_bpd),
        "num_evaluations": estimate.num_evaluations,
        "pilot_evaluations": pilot.terms_bpd.numel(),
        "estimator_standard_error": estimate.mean_standard_error,
        "estimator_ci95": list(estimate.mean_interval(0.95)),
        "mean_prior_bpd": estimate.prior_bpd.mean().item(),
        "mean_decoder_bpd": estimate.decoder_bpd.mean().item(),
    }
    per_image = [
        {"index": index, "bpd": total, "standard_error": error, "ci95": [lo, hi], "prior_bpd": prior}
        for index, (total, error, lo, hi, prior) in enumerate(
            zip(
                estimate.total_bpd.tolist(),
                estimate.standard_error.tolist(),
                low.tolist(),
                high.tolist(),
                estimate.prior_bpd.tolist(),
                strict=True,
            )
        )
    ]
    return {"summary": summary, "images": per_image}


def _over_images(total_bpd: torch.Tensor) -> dict[str, Any]:
    """Mean bits/dim over the images and its 95% interval (Student t over images, as a population estimate)."""
    count = len(total_bpd)
    mean = total_bpd.mean().item()
    if count < 2:
        return {"num_images": count, "mean_bpd": mean, "std_bpd": None, "ci95": None}
    std = total_bpd.std(correction=1).item()
    half_width = student_t_quantile(0.95, torch.tensor(count - 1.0)).item() * std / math.sqrt(count)
    return {"num_images": count, "mean_bpd": mean, "std_bpd": std, "ci95": [mean - half_width, mean + half_width]}


def _settings(args: argparse.Namespace, scheduler: Any) -> dict[str, Any]:
    settings = {
        key: str(value) if isinstance(value, Path) else value
        for key, value in vars(args).items()
        if key not in ("command", "module", "check")
    }
    settings["num_train_timesteps"] = scheduler.config.num_train_timesteps
    settings["variance_type"] = scheduler.config.variance_type
    settings["prediction_type"] = scheduler.config.prediction_type
    return settings


def _summary_line(summary: dict[str, Any]) -> str:
    line = f"bits/dim: {summary['mean_bpd']:.4f}"
    if summary["ci95"] is not None:
        low, high = summary["ci95"]
        line += f" ± {(high - low) / 2:.4f} (95% CI over {summary['num_images']} images)"
    line += f", {summary['num_evaluations']} network evaluations"
    if "estimator_standard_error" in summary:
        line += f"; estimator standard error {summary['estimator_standard_error']:.4f}"
    return line
