"""`ddpm-plus bpd`: bits/dim of a saved DDPM pipeline on a data set, exact or estimated, with a JSON report and a
figure.

The arguments, their checks (the output location included) and the usage text are in `ddpm_plus.cli`, which
imports this module (torch, diffusers) only to run the command; user errors are `ValueError`s, which `cli.main`
prints as one line with exit code 2.

Under `accelerate launch` the processes share the images in chunks (one network batch each, the same chunks for any
number of processes) and gather the per-image results in image order, so the report is the 1-process one. With
`--output FILE`, each finished chunk is kept in `FILE.partial/` until the report is written: a rerun of the same
command after an interruption computes only the chunks that are missing there. A report or partial results of other
settings at `--output` are refused in one line, or replaced with `--overwrite`.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ddpm_plus.bound_estimation import BoundEstimate, PilotTerms, estimate_bound, pilot_terms, student_t_quantile
from ddpm_plus.cli import SAMPLES_PER_STRATUM, method_settings
from ddpm_plus.likelihood import BoundResult, variational_bound
from ddpm_plus.pipeline_ddpm_plus import image_size
from ddpm_plus.probability_flow import ODELikelihoodResult, check_flow_model, ode_likelihood
from ddpm_plus.resources import FLOAT32_BYTES, check_memory, first_level_channels, images_bytes, network_batch_bytes
from ddpm_plus.sharding import ChunkStore, Processes, chunks_of, default_device, launched_processes, map_chunks
from ddpm_plus.utils import derived_seed, first_difference, write_json

# Settings that change how fast a report is made, not its numbers (per-image keys and one network batch per chunk).
SPEED_SETTINGS = ("batch_size", "num_threads")


def run(args: argparse.Namespace) -> int:
    """Run `ddpm-plus bpd` (arguments already checked by `ddpm_plus.cli`); returns the exit status."""
    args.device = default_device(args.device)
    with launched_processes(cpu=args.device == "cpu", num_threads=args.num_threads) as processes:
        unet, scheduler = load_model(args.model, processes.device(args.device))
        if unet.config.get("num_class_embeds") is not None:
            raise ValueError(
                f"--model {args.model} is class-conditional, and the data sets here carry no labels: compute its bound "
                "with pipe.log_likelihood(images, class_labels=...)."
            )
        if args.method == "ode":
            check_flow_model(unet, scheduler)
        check_earlier_report(args, scheduler)
        dataset, count = open_images(args.data, args.split, unet.config, args.max_images)
        check_request(unet.config, scheduler.config.num_train_timesteps, count, args, processes.device(args.device))
        images = torch.stack([dataset[index] for index in range(count)])
        store = (
            None
            if args.output is None
            else ChunkStore(
                partial_results(args.output), _resume_settings(args, scheduler), processes, replace=args.overwrite
            )
        )
        start = time.perf_counter()
        if args.method == "ode":
            result, pilot = _ode_likelihood(unet, scheduler, images, args, processes, store), None
        elif args.num_timesteps == "full":
            result, pilot = _exact_bound(unet, scheduler, images, args, processes, store), None
        else:
            pilot = _pilot_terms(unet, scheduler, images, args)
            result = _estimated_bound(unet, scheduler, images, pilot, args, processes, store)
        if processes.is_main:
            _write_outputs(result, pilot, args, scheduler, time.perf_counter() - start)
    return 0


def _write_outputs(
    result: BoundResult | BoundEstimate | ODELikelihoodResult,
    pilot: PilotTerms | None,
    args: argparse.Namespace,
    scheduler: Any,
    seconds: float,
) -> None:
    """Print the summary; write the JSON report (then drop the partial results) and the figure where asked."""
    if isinstance(result, ODELikelihoodResult):
        report = _ode_report(result)
    else:
        report = _exact_report(result) if pilot is None else _estimate_report(result, pilot)
    report["summary"]["seconds"] = round(seconds, 3)
    report["settings"] = _settings(args, scheduler)
    print(_summary_line(report["summary"]))
    if args.output is not None:
        write_json(args.output, report)
        shutil.rmtree(partial_results(args.output), ignore_errors=True)
        print(f"wrote {args.output}")
    if args.plot is not None:
        from ddpm_plus.plots import save_bound_figure, save_ode_figure

        model_name = Path(args.model).resolve().name
        if isinstance(result, ODELikelihoodResult):
            save_ode_figure(result, args.plot, model_name=model_name)
        else:
            save_bound_figure(result, args.plot, pilot=pilot, model_name=model_name)
        print(f"wrote {args.plot}")


def check_earlier_report(args: argparse.Namespace, scheduler: Any) -> None:
    """Unless --overwrite, a ValueError for an --output file that is not the report of a run with these settings
    (those that decide its numbers: not --batch-size or --num-threads): a finished report is never replaced by one of
    other settings without being asked."""
    if args.output is None or args.overwrite or not args.output.is_file():
        return
    try:
        recorded = json.loads(args.output.read_text(encoding="utf-8"))["settings"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(
            f"--output {args.output} exists and is not a report of ddpm-plus bpd; pass --overwrite to replace it, or "
            "give another --output."
        ) from None
    deciding = {key: value for key, value in _resume_settings(args, scheduler).items() if key not in SPEED_SETTINGS}
    difference = first_difference(recorded, deciding)
    if difference is not None:
        raise ValueError(
            f"--output {args.output} holds the report of an earlier run with other settings ({difference}); pass "
            "--overwrite to replace it, or give another --output."
        )


def partial_results(output: Path) -> Path:
    """Where the per-chunk results of a run with `--output` wait for its report: `output` + ".partial"."""
    return output.with_name(output.name + ".partial")


def load_model(model: str, device: torch.device) -> tuple[Any, Any]:
    """The UNet (float32, eval mode, on `device`) and the DDPMPlusScheduler of a saved DDPM+ or plain diffusers
    DDPMPipeline folder, of a Hub id, or of a folder holding just `unet/` and `scheduler/`."""
    from ddpm_plus.cli_sample import load_pipeline

    directory = Path(model)
    if directory.is_dir() and not (directory / "model_index.json").is_file():
        return load_components(directory, device)
    pipeline = load_pipeline(model, "float32", device, show_progress=False)
    return pipeline.unet.eval(), pipeline.scheduler


def load_components(directory: Path, device: torch.device) -> tuple[Any, Any]:
    """The UNet and scheduler of a folder without `model_index.json` that holds `unet/` and `scheduler/`."""
    from diffusers import UNet2DModel

    from ddpm_plus.cli_sample import model_option_errors
    from ddpm_plus.pipeline_ddpm_plus import check_component_folders
    from ddpm_plus.scheduling_ddpm_plus import DDPMPlusScheduler

    if not (directory / "unet").is_dir() or not (directory / "scheduler").is_dir():
        raise ValueError(
            f"--model {directory} is not a saved pipeline folder: it has neither model_index.json nor unet/ and "
            "scheduler/ subfolders."
        )
    with model_option_errors(str(directory)):
        check_component_folders(directory)
    unet = UNet2DModel.from_pretrained(directory, subfolder="unet", torch_dtype=torch.float32).to(device).eval()
    return unet, DDPMPlusScheduler.from_pretrained(directory, subfolder="scheduler")


def load_images(source: str, split: str, unet_config: Any, max_images: int | None) -> torch.Tensor:
    """The data set's images (N, C, H, W) at the UNet's (square) size, as float32 on the 8-bit grid."""
    dataset, count = open_images(source, split, unet_config, max_images)
    return torch.stack([dataset[index] for index in range(count)])


def open_images(source: str, split: str, unet_config: Any, max_images: int | None) -> tuple[Any, int]:
    """The data set at the UNet's (square) size, and how many of its images are evaluated."""
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
    return dataset, count


def check_request(
    unet_config: Any, num_train_timesteps: int, count: int, args: argparse.Namespace, device: Any
) -> None:
    """Refuse, before any image is read, an evaluation whose images, per-image results and network batch cannot fit
    in memory at once: the images as float32, the exact bound's two (N, T) float64 tables (terms and distortions),
    and one network call's first activation."""
    height, width = image_size(unet_config.sample_size)
    images = images_bytes(count, unet_config.in_channels, height, width, FLOAT32_BYTES)
    tables = 2 * count * num_train_timesteps * 8 if args.method == "bound" and args.num_timesteps == "full" else 0
    batch = network_batch_bytes(args.batch_size, first_level_channels(unet_config), height, width, FLOAT32_BYTES)
    check_memory(
        images + tables + batch, f"{count} images at {height}x{width} with --batch-size {args.batch_size}", device
    )


def image_generators(seed: int, indices: range) -> list[torch.Generator]:
    """One CPU generator per image, seeded with `derived_seed(seed, image index)`."""
    return [torch.Generator().manual_seed(derived_seed(seed, index)) for index in indices]


def _over_image_batches(
    evaluate: Callable[..., Any],
    kind: type,
    images: torch.Tensor,
    args: argparse.Namespace,
    inputs_per_image: int,
    desc: str,
    processes: Processes,
    store: ChunkStore | None,
) -> list[Any]:
    """`evaluate(batch, generator=...)`, a `kind`, on consecutive chunks of about `batch_size` network inputs'
    worth of images (at least one image), each image with its own generator (`image_generators`): the processes
    share the chunks, and the chunks that `store` holds from an interrupted run are read instead (`map_chunks`)."""

    def evaluate_chunk(indices: range) -> Any:
        return evaluate(images[indices.start : indices.stop], generator=image_generators(args.seed, indices))

    chunks = chunks_of(len(images), max(1, args.batch_size // inputs_per_image))
    return map_chunks(processes, chunks, evaluate_chunk, kind, desc=desc, store=store)


def _bound_options(args: argparse.Namespace) -> dict[str, Any]:
    """The engine's options of the bound and its estimate."""
    return {"max_batch_size": args.batch_size, "clip_denoised": args.clip_denoised, "progress": False}


def _exact_bound(
    unet: Any,
    scheduler: Any,
    images: torch.Tensor,
    args: argparse.Namespace,
    processes: Processes,
    store: ChunkStore | None,
) -> BoundResult:
    num_steps = scheduler.config.num_train_timesteps
    exact_bound = functools.partial(variational_bound, unet, scheduler=scheduler, **_bound_options(args))
    parts = _over_image_batches(exact_bound, BoundResult, images, args, num_steps, "bpd (exact)", processes, store)
    return BoundResult.concat(parts)


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
    unet: Any,
    scheduler: Any,
    images: torch.Tensor,
    pilot: PilotTerms,
    args: argparse.Namespace,
    processes: Processes,
    store: ChunkStore | None,
) -> BoundEstimate:
    estimated_bound = functools.partial(
        estimate_bound,
        unet,
        scheduler=scheduler,
        num_strata=(args.num_timesteps - 1) // SAMPLES_PER_STRATUM,
        samples_per_stratum=SAMPLES_PER_STRATUM,
        profile=pilot.profile(),
        **_bound_options(args),
    )
    estimates = _over_image_batches(
        estimated_bound, BoundEstimate, images, args, args.num_timesteps, "bpd (estimate)", processes, store
    )
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


def _ode_likelihood(
    unet: Any,
    scheduler: Any,
    images: torch.Tensor,
    args: argparse.Namespace,
    processes: Processes,
    store: ChunkStore | None,
) -> ODELikelihoodResult:
    """The ODE's bits/dim, one solve per chunk of `--batch-size` (image, draw) rows."""
    likelihood = functools.partial(
        ode_likelihood,
        unet,
        scheduler=scheduler,
        num_draws=args.draws,
        divergence=args.divergence,
        num_probes=args.num_probes,
        rtol=args.rtol,
        atol=args.atol,
        max_batch_size=args.batch_size,
        progress=False,
    )
    parts = _over_image_batches(
        likelihood, ODELikelihoodResult, images, args, args.draws, "bpd (ODE)", processes, store
    )
    return ODELikelihoodResult.concat(parts)


def _ode_report(result: ODELikelihoodResult) -> dict[str, Any]:
    draw_errors = result.draw_standard_error()
    summary = {
        **_over_images(result.bits_per_dim),
        "standard_error_over_images": _finite_or_none(result.standard_error_over_images),
        "standard_error_over_draws": _finite_or_none(result.standard_error_over_draws),
        "num_draws": result.draws_bpd.shape[1],
        "num_evaluations": result.num_evaluations,
        "mean_function_evaluations": result.function_evaluations.double().mean().item(),
        "mean_prior_bpd": result.prior_bpd.mean().item(),
        "mean_path_bpd": result.path_bpd.mean(0).tolist(),
    }
    per_image = [
        {
            "index": index,
            "bpd": bpd,
            "draws_bpd": draws,
            "draw_standard_error": _finite_or_none(error),
            "function_evaluations": evaluations,
        }
        for index, (bpd, draws, error, evaluations) in enumerate(
            zip(
                result.bits_per_dim.tolist(),
                result.draws_bpd.tolist(),
                draw_errors.tolist(),
                result.function_evaluations.tolist(),
                strict=True,
            )
        )
    ]
    return {"summary": summary, "images": per_image}


def _finite_or_none(value: float) -> float | None:
    """A value for JSON: NaN (a standard error from a single draw or image) is null."""
    return value if math.isfinite(value) else None


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
        for key, value in method_settings(args).items()
        if key not in ("command", "module", "check", "output_location", "overwrite")
    }
    settings["num_train_timesteps"] = scheduler.config.num_train_timesteps
    settings["variance_type"] = scheduler.config.variance_type
    settings["prediction_type"] = scheduler.config.prediction_type
    return settings


def _resume_settings(args: argparse.Namespace, scheduler: Any) -> dict[str, Any]:
    """The settings that partial results must share with a rerun that reads them: all but where outputs go."""
    return {key: value for key, value in _settings(args, scheduler).items() if key not in ("output", "plot")}


def _summary_line(summary: dict[str, Any]) -> str:
    method = f" (probability-flow ODE, {summary['num_draws']} draws per image)" if "num_draws" in summary else ""
    line = f"bits/dim{method}: {summary['mean_bpd']:.4f}"
    if summary["ci95"] is not None:
        low, high = summary["ci95"]
        line += f" ± {(high - low) / 2:.4f} (95% CI over {summary['num_images']} images)"
    line += f", {summary['num_evaluations']} network evaluations"
    if summary.get("standard_error_over_draws") is not None:
        line += f"; standard error over the draws {summary['standard_error_over_draws']:.4f}"
    if "estimator_standard_error" in summary:
        line += f"; estimator standard error {summary['estimator_standard_error']:.4f}"
    return line
