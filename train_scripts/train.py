#!/usr/bin/env python
# Copyright 2026 The ddpm_plus authors. Licensed under the Apache License, Version 2.0.
"""Train a DDPM (Ho et al. 2020) with 🤗 accelerate, from a laptop CPU to many GPUs.

    accelerate launch train_scripts/train.py --output_dir runs/digits

With no data argument it trains the ~1M-parameter `digits-16` UNet on the embedded digits (the UCI handwritten
digits shipped in the package, at 16x16, fixed held-out split) and writes a `DDPMPlusPipeline` with the EMA weights,
its model card, a sample grid `samples.png` and the held-out bits/dim `bpd.json` to `--output_dir`.

Several processes: `accelerate launch --multi_gpu --num_processes N train_scripts/train.py ...` (DDP; on a machine
without GPUs the processes form a gloo group on the CPUs). Checkpoints (`--checkpointing_steps`) are written
atomically and `--resume_from_checkpoint latest` continues bitwise-identically on the CPU.
"""

# ruff: noqa: E402  (the OpenMP setting below must precede the imports that load torch)
from __future__ import annotations

import os

# Idle torch (GNU OpenMP) threads spin 300,000 times before they sleep. On a CPU shared with other jobs a spinning
# thread takes the core its partner needs: on 2 cores, next to another torch job, a digits-16 step took 2.1 s instead
# of 0.49 s with 5,000 spins, which cost ~6% on an idle machine (0.176 s instead of 0.166 s). An explicit
# GOMP_SPINCOUNT (or OMP_WAIT_POLICY) in the environment wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "5000")

import argparse
import json
import logging
import math
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.tracking import get_available_trackers
from accelerate.utils import SCALER_NAME, LoggerType, set_seed
from diffusers import UNet2DModel
from diffusers.optimization import SchedulerType, get_scheduler
from diffusers.training_utils import EMAModel
from huggingface_hub import get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id
from PIL import Image
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ddpm_plus.cli import check_output_directory, check_output_file
from ddpm_plus.data import load_image_dataset, make_grid
from ddpm_plus.hub import push_pipeline_to_hub, write_model_card
from ddpm_plus.likelihood import BoundEstimate, estimate_bound, pilot_profile
from ddpm_plus.models import available_configs, downsampling_factor, learns_sigma, unet_config
from ddpm_plus.pipeline_ddpm_plus import DDPMPlusPipeline
from ddpm_plus.scheduling_ddpm_plus import (
    BETA_SCHEDULES,
    LEARNED_VARIANCE_TYPES,
    LOSS_TYPES,
    PREDICTION_TYPES,
    VARIANCE_TYPES,
    DDPMPlusScheduler,
)
from ddpm_plus.timestep_samplers import TIMESTEP_SAMPLERS, create_timestep_sampler
from ddpm_plus.training import (
    EMA_WEIGHTS_FILE,
    TRAINING_STATE_FILE,
    DiffusionObjective,
    ResumeChoice,
    ShardedBatchSampler,
    TrainingError,
    TrainingGenerators,
    TrainingStep,
    all_finite,
    build_optimizer,
    create_accelerator,
    ema_settings,
    explained_write_errors,
    latest_checkpoint,
    load_ema_state,
    load_generators,
    optimizer_step_batches,
    process_group_lifetime,
    remove_unfinished_checkpoints,
    resolve_resume_checkpoint,
    save_checkpoint,
    save_ema_weights,
    save_generators,
    set_optimizer_hyperparameters,
    torch_threads_per_process,
    write_json,
)

logger = get_logger(__name__)

DEFAULT_MAX_TRAIN_STEPS = 2000
"""Optimizer steps when neither --max_train_steps nor --num_epochs is given (the digits demo's budget)."""
DEFAULT_INFERENCE_STEPS = 250
"""Sampling steps of the sample grids unless given: the respaced chain keeps grids cheap during training."""

# diffusers' schedules, less those that need settings this script does not take (piecewise_constant's step rules).
LR_SCHEDULERS = tuple(kind.value for kind in SchedulerType if kind is not SchedulerType.PIECEWISE_CONSTANT)
MIN_TRAIN_TIMESTEPS = 2
"""The held-out bits/dim needs the decoder term (t = 0) and at least one KL term; T = 1 would fail after training."""

# Settings a checkpoint must share with the run that resumes it: they fix the model, the diffusion and its objective,
# the training data and the position in it. Changing one mid-run would silently train a different model (or, for the
# batch layout and seed, repeat and skip images); every other setting is honoured from the resumed step on.
RESUME_SIGNATURE_KEYS = (
    # the model
    "model_config",
    "unet_config",
    "resolution",
    "learn_sigma",
    "use_ema",
    # the diffusion and the objective
    "prediction_type",
    "variance_type",
    "loss",
    "beta_schedule",
    "beta_start",
    "beta_end",
    "num_train_timesteps",
    "timestep_sampler",
    "snr_gamma",
    "vlb_weight",
    # the training data and the position in it
    "dataset_name",
    "train_data_dir",
    "image_column",
    "held_out_fraction",
    "center_crop",
    "random_flip",
    "train_batch_size",
    "gradient_accumulation_steps",
    "num_processes",
    "seed",
)
# Never recorded in logs, trackers, model cards or checkpoints.
SECRET_ARGUMENTS = ("hub_token",)
DEBUG_ARGUMENTS = ("debug_record_dir", "debug_kill_after_step", "debug_kill_while_saving_step", "debug_nan_batch_steps")
# What a run writes into --output_dir besides its checkpoints: checked before the first step.
OUTPUT_FILES = ("samples.png", "bpd.json", "README.md", "model_index.json")
OUTPUT_DIRECTORIES = ("unet", "scheduler", "samples", "logs")
MIN_GRID_SIDE = 256  # sample grids of small images are enlarged (nearest neighbour) to at least this many pixels


# --------------------------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_data_arguments(parser.add_argument_group("data"))
    _add_model_arguments(parser.add_argument_group("model and objective"))
    _add_optimization_arguments(parser.add_argument_group("optimization"))
    _add_output_arguments(parser.add_argument_group("outputs, evaluation and logging"))
    _add_checkpoint_arguments(parser.add_argument_group("checkpoints"))
    _add_hub_arguments(parser.add_argument_group("Hugging Face Hub"))
    _add_debug_arguments(parser)
    return parser


def _add_data_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--dataset_name",
        default=None,
        help="A 🤗 datasets name or path (read offline from the local cache with HF_DATASETS_OFFLINE=1), or a "
        "directory written by save_to_disk. Default: the embedded digits.",
    )
    group.add_argument("--train_data_dir", default=None, help="A folder of images (searched recursively).")
    group.add_argument("--cache_dir", default=None, help="🤗 datasets cache directory.")
    group.add_argument("--image_column", default=None, help="Image column of a 🤗 dataset (default: detected).")
    group.add_argument(
        "--resolution", type=int, default=None, help="Image side; default: the model config's sample_size (16)."
    )
    group.add_argument(
        "--center_crop",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Crop the centre square after resizing (--no-center_crop: a random square).",
    )
    group.add_argument("--random_flip", action="store_true", help="Flip images horizontally at random.")
    group.add_argument(
        "--held_out_fraction",
        type=float,
        default=0.0,
        help="For image folders and saved datasets without splits: the fixed fraction held out for bits/dim.",
    )
    group.add_argument(
        "--eval_split",
        default=None,
        help="Split for the held-out bits/dim: default 'test' for the digits and with --held_out_fraction; "
        "a split name for 🤗 datasets (none by default).",
    )
    group.add_argument("--num_eval_images", type=int, default=None, help="Held-out images to evaluate (all).")
    group.add_argument("--dataloader_num_workers", type=int, default=0, help="Data loader worker processes.")


def _add_model_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--model_config",
        default="digits-16",
        help=f"A named UNet config ({', '.join(available_configs())}) or a JSON UNet2DModel config file.",
    )
    group.add_argument("--learn_sigma", action="store_true", help="Also learn the variances (doubled output channels).")
    group.add_argument("--prediction_type", default="epsilon", choices=PREDICTION_TYPES)
    group.add_argument(
        "--variance_type",
        default=None,
        choices=VARIANCE_TYPES,
        help="Default: fixed_small, or learned_range when the model learns sigma.",
    )
    group.add_argument("--loss", default="simple", choices=LOSS_TYPES, help="simple (eq. 14), vlb, hybrid or kl.")
    group.add_argument("--beta_schedule", default="linear", choices=BETA_SCHEDULES)
    group.add_argument("--beta_start", type=float, default=1e-4)
    group.add_argument("--beta_end", type=float, default=0.02)
    group.add_argument("--num_train_timesteps", type=int, default=1000)
    group.add_argument("--timestep_sampler", default="uniform", choices=TIMESTEP_SAMPLERS)
    group.add_argument("--snr_gamma", type=float, default=None, help="Min-SNR-γ loss weighting (off by default).")
    group.add_argument("--vlb_weight", type=float, default=0.001, help="λ of the hybrid loss.")


def _add_optimization_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--train_batch_size", type=int, default=64, help="Images per process and micro-batch.")
    group.add_argument(
        "--max_train_steps",
        type=int,
        default=None,
        help=f"Optimizer steps (default: --num_epochs if given, else {DEFAULT_MAX_TRAIN_STEPS}).",
    )
    group.add_argument("--num_epochs", type=int, default=None, help="Epochs, when --max_train_steps is not given.")
    group.add_argument("--gradient_accumulation_steps", type=int, default=1)
    group.add_argument("--learning_rate", type=float, default=2e-3)
    group.add_argument("--lr_scheduler", default="cosine", choices=LR_SCHEDULERS)
    group.add_argument("--lr_warmup_steps", type=int, default=100)
    group.add_argument("--adam_beta1", type=float, default=0.9)
    group.add_argument("--adam_beta2", type=float, default=0.999)
    group.add_argument("--adam_weight_decay", type=float, default=0.0)
    group.add_argument("--adam_epsilon", type=float, default=1e-8)
    group.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping (0: off).")
    group.add_argument(
        "--skip_nonfinite_steps",
        type=int,
        default=0,
        help="Skip up to N batches whose loss or gradient is not finite (no update, EMA untouched; each is logged) "
        "before the run stops as diverged. Default 0: stop at the first one. Nothing non-finite is ever saved.",
    )
    group.add_argument(
        "--use_ema", action=argparse.BooleanOptionalAction, default=True, help="Keep an EMA of the weights."
    )
    group.add_argument("--ema_max_decay", type=float, default=0.9999)
    group.add_argument("--ema_inv_gamma", type=float, default=1.0, help="EMA warm-up: decay 1 - (1 + step/γ)^-p.")
    group.add_argument("--ema_power", type=float, default=0.75, help="EMA warm-up power p.")
    group.add_argument("--mixed_precision", default="no", choices=("no", "fp16", "bf16"))
    group.add_argument("--seed", type=int, default=0)
    group.add_argument(
        "--channels_last", action=argparse.BooleanOptionalAction, default=True, help="channels_last memory format."
    )
    group.add_argument("--compile", action="store_true", help="torch.compile the UNet.")
    group.add_argument(
        "--allow_tf32", action=argparse.BooleanOptionalAction, default=True, help="TF32 matmuls on CUDA."
    )
    group.add_argument(
        "--deterministic",
        action="store_true",
        help="torch.use_deterministic_algorithms (warn-only: an op without a deterministic implementation warns) "
        "and a fixed cuBLAS workspace, so that a GPU run can repeat bitwise; slower.",
    )
    group.add_argument(
        "--num_threads",
        type=int,
        default=None,
        help="Torch threads per process (default: the CPU cores divided among this machine's processes).",
    )


def _add_output_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--output_dir", required=True, help="Pipeline, samples, bits/dim, logs and checkpoints.")
    group.add_argument("--report_to", default="tensorboard", help="accelerate tracker, or 'none'.")
    group.add_argument("--logging_steps", type=int, default=10)
    group.add_argument(
        "--save_images_steps", type=int, default=1000, help="Sample grid every N steps (0: only at the end)."
    )
    group.add_argument("--num_grid_images", type=int, default=64)
    group.add_argument(
        "--num_inference_steps",
        type=int,
        default=None,
        help=f"Sampling steps of the grids (default: {DEFAULT_INFERENCE_STEPS} or T if smaller; fewer than T "
        "respace the chain).",
    )
    group.add_argument(
        "--bpd_steps", type=int, default=1000, help="Held-out bits/dim every N steps (0: only at the end)."
    )
    group.add_argument("--bpd_strata", type=int, default=24, help="Timestep strata of the bits/dim estimator.")
    group.add_argument("--bpd_samples_per_stratum", type=int, default=2)
    group.add_argument("--eval_batch_size", type=int, default=256, help="Images per network call in evaluation.")


def _add_checkpoint_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--checkpointing_steps", type=int, default=500, help="Checkpoint every N steps (0: never).")
    group.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep the newest N checkpoints.")
    group.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help="'latest' (the newest finished checkpoint in --output_dir, if any) or a checkpoint directory.",
    )


def _add_hub_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--push_to_hub", action="store_true", help="Upload the pipeline with its model card.")
    group.add_argument("--hub_model_id", default=None, help="Repository id (default: the output_dir's name).")
    group.add_argument("--hub_private_repo", action="store_true")
    group.add_argument(
        "--hub_token",
        default=None,
        help="Visible to other users of this machine: prefer HF_TOKEN or `huggingface-cli login`.",
    )


def _add_debug_arguments(parser: argparse.ArgumentParser) -> None:
    # Test aids, not shown in --help: record each process's items and final weights; kill at a given point.
    parser.add_argument("--debug_record_dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--debug_kill_after_step", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--debug_kill_while_saving_step", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--debug_nan_batch_steps", type=int, nargs="*", default=(), help=argparse.SUPPRESS)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def check_arguments(args: argparse.Namespace) -> None:
    """ValueError for inconsistent arguments and unwritable outputs, before anything is loaded or trained."""
    if args.dataset_name and args.train_data_dir:
        raise ValueError("Give --dataset_name or --train_data_dir, not both.")
    _check_ranges(args)
    if args.num_train_timesteps < MIN_TRAIN_TIMESTEPS:
        raise ValueError(
            f"--num_train_timesteps must be at least {MIN_TRAIN_TIMESTEPS} (the held-out bits/dim needs the decoder "
            f"term and at least one KL term), got {args.num_train_timesteps}."
        )
    if args.num_inference_steps is not None and args.num_inference_steps > args.num_train_timesteps:
        raise ValueError("--num_inference_steps cannot exceed --num_train_timesteps.")
    _check_tracker(args.report_to)
    check_output_locations(args)
    _check_hub_arguments(args)
    if args.hub_token is not None:
        warnings.warn(
            "--hub_token on the command line is visible to other users of this machine (process list, shell "
            "history); prefer the HF_TOKEN environment variable or `huggingface-cli login`.",
            stacklevel=2,
        )


def _check_ranges(args: argparse.Namespace) -> None:
    positive = ("train_batch_size", "gradient_accumulation_steps", "num_train_timesteps", "logging_steps")
    positive += ("num_grid_images", "eval_batch_size", "bpd_strata")
    optional_positive = ("max_train_steps", "num_epochs", "resolution", "num_eval_images", "num_inference_steps")
    optional_positive += ("checkpoints_total_limit", "num_threads")
    non_negative = ("save_images_steps", "bpd_steps", "checkpointing_steps", "lr_warmup_steps", "seed")
    non_negative += ("dataloader_num_workers", "max_grad_norm", "adam_weight_decay", "skip_nonfinite_steps")
    for name in positive + optional_positive:
        value = getattr(args, name)
        if (value is not None or name in positive) and value < 1:
            raise ValueError(f"--{name} must be positive, got {value}.")
    for name in non_negative:
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must not be negative, got {getattr(args, name)}.")
    if args.learning_rate <= 0:
        raise ValueError(f"--learning_rate must be positive, got {args.learning_rate}.")
    if args.bpd_samples_per_stratum < 2:
        raise ValueError("--bpd_samples_per_stratum must be at least 2 (the estimator needs a variance).")
    if args.snr_gamma is not None and args.snr_gamma <= 0:
        raise ValueError(f"--snr_gamma must be positive, got {args.snr_gamma}.")
    if not 0.0 <= args.ema_max_decay <= 1.0:
        raise ValueError(f"--ema_max_decay must lie in [0, 1], got {args.ema_max_decay}.")


def check_output_locations(args: argparse.Namespace) -> None:
    """ValueError unless --output_dir (and --cache_dir) can be written, with no file or directory in the way of an
    output; creates nothing."""
    output_dir = Path(args.output_dir)
    check_output_directory(output_dir, "--output_dir")
    for name in OUTPUT_FILES:
        check_output_file(output_dir / name, "--output_dir: the output")
    for name in OUTPUT_DIRECTORIES:
        check_output_directory(output_dir / name, "--output_dir: the output folder")
    if args.cache_dir is not None:
        check_output_directory(Path(args.cache_dir), "--cache_dir")


def hub_repo_id(args: argparse.Namespace) -> str:
    """The Hub repository of --push_to_hub: --hub_model_id, or the name of --output_dir."""
    return args.hub_model_id or Path(args.output_dir).absolute().name


def _check_hub_arguments(args: argparse.Namespace) -> None:
    """With --push_to_hub: a valid repository id and a token, so that the upload does not fail after training."""
    if not args.push_to_hub:
        return
    try:
        validate_repo_id(hub_repo_id(args))
    except HFValidationError as error:
        raise ValueError(
            f"--push_to_hub: invalid repository id (--hub_model_id or the output folder's name): {error}"
        ) from None
    if args.hub_token is None and get_token() is None:
        raise ValueError("--push_to_hub needs a Hub token: run `huggingface-cli login` or set HF_TOKEN.")


def _check_tracker(report_to: str) -> None:
    """ValueError for an unknown tracker, or one whose package is missing (accelerate would only warn and train
    without it)."""
    if report_to in ("none", "all"):
        return
    known = [kind.value for kind in LoggerType if kind is not LoggerType.ALL]
    if report_to not in known:
        raise ValueError(f"--report_to {report_to}: unknown tracker; choose one of {', '.join(known)}, all or none.")
    if report_to not in [kind.value for kind in get_available_trackers()]:
        raise ValueError(f"--report_to {report_to} needs the {report_to} package: pip install {report_to}.")


# --------------------------------------------------------------------------------------------- run setup


@dataclass
class RunSetup:
    """What the arguments resolve to: the UNet config, the noise scheduler, the data sets, the verified checkpoint."""

    unet_config: dict[str, Any]
    noise_scheduler: DDPMPlusScheduler
    train_set: torch.utils.data.Dataset
    eval_images: torch.Tensor | None
    resolution: int
    resume: ResumeChoice | None = None


def resolve_unet_config(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """The UNet config at the training resolution, and that resolution; ValueError when they do not fit."""
    config = unet_config(args.model_config, learn_sigma=args.learn_sigma)
    resolution = args.resolution or config["sample_size"]
    if not isinstance(resolution, int):
        raise ValueError(f"The model config has a non-square sample_size {resolution}; pass --resolution.")
    factor = downsampling_factor(config)
    if resolution % factor:
        raise ValueError(
            f"--resolution {resolution} is not divisible by {factor}, the total downsampling of the UNet config "
            f"{args.model_config!r}; use a multiple of {factor}."
        )
    config["sample_size"] = resolution
    return config, resolution


def build_noise_scheduler(args: argparse.Namespace, config: dict[str, Any]) -> DDPMPlusScheduler:
    """The training scheduler; its variance type follows the model's output channels unless given."""
    learned = learns_sigma(config)
    variance_type = args.variance_type or ("learned_range" if learned else "fixed_small")
    if learned != (variance_type in LEARNED_VARIANCE_TYPES):
        raise ValueError(
            f"--variance_type {variance_type} does not fit the model: a model that learns sigma (--learn_sigma or "
            f"a config with doubled output channels) needs {' or '.join(LEARNED_VARIANCE_TYPES)}, and those need one."
        )
    if args.loss == "hybrid" and not learned:
        raise ValueError("--loss hybrid trains the learned variances: add --learn_sigma.")
    return DDPMPlusScheduler(
        num_train_timesteps=args.num_train_timesteps,
        beta_start=args.beta_start,
        beta_end=args.beta_end,
        beta_schedule=args.beta_schedule,
        variance_type=variance_type,
        prediction_type=args.prediction_type,
    )


def data_source(args: argparse.Namespace) -> str | None:
    return args.train_data_dir or args.dataset_name


def eval_split(args: argparse.Namespace) -> str | None:
    """The held-out split: given, or 'test' for the digits and for sources with a held-out fraction."""
    if args.eval_split is not None:
        return args.eval_split
    if data_source(args) is None or args.held_out_fraction > 0:
        return "test"
    return None


def load_datasets(
    args: argparse.Namespace, resolution: int, num_channels: int
) -> tuple[torch.utils.data.Dataset, torch.Tensor | None]:
    """The training set and the held-out images (a tensor, or None when there is no held-out split)."""
    common = {
        "resolution": resolution,
        "num_channels": num_channels,
        "cache_dir": args.cache_dir,
        "image_column": args.image_column,
        "held_out_fraction": args.held_out_fraction,
    }
    train_set = load_image_dataset(
        data_source(args), split="train", center_crop=args.center_crop, random_flip=args.random_flip, **common
    )
    split = eval_split(args)
    if split is None:
        return train_set, None
    eval_set = load_image_dataset(data_source(args), split=split, center_crop=True, random_flip=False, **common)
    count = len(eval_set) if args.num_eval_images is None else min(args.num_eval_images, len(eval_set))
    return train_set, torch.stack([eval_set[index] for index in range(count)])


def prepare_run(args: argparse.Namespace) -> RunSetup:
    """Resolve and check everything that can fail on bad input, before any training."""
    check_arguments(args)
    config, resolution = resolve_unet_config(args)
    noise_scheduler = build_noise_scheduler(args, config)
    resume = resolve_resume_checkpoint(args.resume_from_checkpoint, args.output_dir)
    train_set, eval_images = load_datasets(args, resolution, config["in_channels"])
    return RunSetup(config, noise_scheduler, train_set, eval_images, resolution, resume)


def inference_steps(args: argparse.Namespace) -> int:
    return args.num_inference_steps or min(DEFAULT_INFERENCE_STEPS, args.num_train_timesteps)


def resolve_max_train_steps(args: argparse.Namespace, steps_per_epoch: int) -> int:
    if args.max_train_steps is not None:
        return args.max_train_steps
    if args.num_epochs is not None:
        return args.num_epochs * steps_per_epoch
    return DEFAULT_MAX_TRAIN_STEPS


def run_signature(args: argparse.Namespace, setup: RunSetup, num_processes: int) -> dict[str, Any]:
    """The settings that a checkpoint and the run resuming it must share (see RESUME_SIGNATURE_KEYS)."""
    resolved = {
        "unet_config": setup.unet_config,
        "resolution": setup.resolution,
        "variance_type": setup.noise_scheduler.config.variance_type,
        "num_processes": num_processes,
    }
    values = {**vars(args), **resolved}
    return json.loads(json.dumps({key: values[key] for key in RESUME_SIGNATURE_KEYS}))  # as a checkpoint records it


def signature_differences(checkpoint_state: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """('name: checkpoint A, now B' for each setting that differs, the settings the checkpoint does not record).

    A checkpoint written before a setting joined the signature is compared through its recorded arguments; the
    UNet config is compared key by key, so that the message names what changed.
    """
    recorded = {**checkpoint_state.get("settings", {}), **checkpoint_state["run"]}
    differences, unrecorded = [], []
    for key, value in current.items():
        if key not in recorded:
            unrecorded.append(key)
        elif key == "unet_config":
            differences += _dict_differences(key, recorded[key], value)
        elif recorded[key] != value:
            differences.append(f"{key}: checkpoint {recorded[key]!r}, now {value!r}")
    return differences, unrecorded


def _dict_differences(name: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [
        f"{name}.{key}: checkpoint {old.get(key)!r}, now {new.get(key)!r}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    ]


def loss_scaler_difference(path: Path, checkpoint_state: dict[str, Any], mixed_precision: str) -> list[str]:
    """A switch to fp16 from a checkpoint without a loss-scaler state, which accelerate cannot load; else []."""
    if mixed_precision != "fp16" or (path / SCALER_NAME).is_file():
        return []
    recorded = checkpoint_state.get("settings", {}).get("mixed_precision")
    return [f"mixed_precision: checkpoint {recorded!r}, now 'fp16' (the checkpoint has no loss-scaler state)"]


def changed_settings(checkpoint_state: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """'name A → B' for each honoured setting (not in the signature) that differs from the checkpoint's record."""
    recorded = checkpoint_state.get("settings", {})
    return [
        f"{key} {recorded[key]!r} → {value!r}"
        for key, value in public_settings(args).items()
        if key in recorded and key != "resume_from_checkpoint" and recorded[key] != value
    ]


def public_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments without secrets and test aids (for trackers, checkpoints and the model card)."""
    return {key: value for key, value in vars(args).items() if key not in SECRET_ARGUMENTS + DEBUG_ARGUMENTS}


# --------------------------------------------------------------------------------------------- training state


@dataclass
class Trainer:
    """The objects of a run and the code that saves, restores and evaluates them."""

    args: argparse.Namespace
    setup: RunSetup
    accelerator: Accelerator
    unet: UNet2DModel  # the raw network whose parameters the prepared model trains
    step_fn: TrainingStep
    batch_sampler: ShardedBatchSampler
    max_train_steps: int
    eval_unet: UNet2DModel | None = None  # main process: receives the EMA weights for sampling and bits/dim
    global_step: int = 0
    skipped_steps: list[dict[str, Any]] = field(default_factory=list)  # {"step", "reason"} of each skipped batch

    @property
    def ema(self) -> EMAModel | None:
        return self.step_fn.ema

    def parameter_names(self) -> list[str]:
        return [name for name, parameter in self.unet.named_parameters() if parameter.requires_grad]

    def training_state(self) -> dict[str, Any]:
        epoch, step_in_epoch = divmod(self.global_step, self.batch_sampler.steps_per_epoch)
        state = {
            "global_step": self.global_step,
            "data_position": {"epoch": epoch, "step_in_epoch": step_in_epoch},
            "lr_scheduler": self.step_fn.lr_scheduler.state_dict(),
            "timestep_sampler": self.step_fn.objective.timestep_sampler.state_dict(),
            "run": run_signature(self.args, self.setup, self.accelerator.num_processes),
            "settings": public_settings(self.args),
            "skipped_steps": self.skipped_steps,
        }
        if self.ema is not None:
            state["ema"] = ema_settings(self.ema)
        return state

    def write_extra_state(self, directory: Path) -> None:
        """Our part of a checkpoint: generators (every process), EMA weights and the JSON state (main process)."""
        save_generators(self.step_fn.generators, directory, self.accelerator.process_index)
        if self.accelerator.is_main_process:
            if self.ema is not None:
                save_ema_weights(self.ema, self.parameter_names(), directory / EMA_WEIGHTS_FILE)
            write_json(directory / TRAINING_STATE_FILE, self.training_state())
        if self.global_step == self.args.debug_kill_while_saving_step:
            os.kill(os.getpid(), signal.SIGKILL)

    def save_checkpoint(self) -> None:
        self.check_finite_weights()
        path = save_checkpoint(
            self.accelerator,
            self.args.output_dir,
            self.global_step,
            self.write_extra_state,
            total_limit=self.args.checkpoints_total_limit,
        )
        logger.info(f"Saved checkpoint {path}", main_process_only=True)

    def resume(self) -> None:
        """Restore the verified checkpoint chosen in `prepare_run`, if any: weights, optimizer, RNGs, EMA, sampler,
        position; then apply the settings that may change on resume (learning rate, AdamW and EMA settings, ...)."""
        choice = self.setup.resume
        if choice is None:
            if self.args.resume_from_checkpoint is not None:
                logger.info("No checkpoint to resume from: starting a new run.", main_process_only=True)
            return
        self._log_resume_choice(choice)
        path = choice.path
        state = json.loads((path / TRAINING_STATE_FILE).read_text())
        self._check_resumable(state, path)
        self.accelerator.load_state(str(path))
        lr_scheduler = self.step_fn.lr_scheduler
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        args = self.args
        set_optimizer_hyperparameters(
            self.step_fn.optimizer,
            lr_scheduler,
            learning_rate=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            weight_decay=args.adam_weight_decay,
            eps=args.adam_epsilon,
        )
        self.step_fn.objective.timestep_sampler.load_state_dict(state["timestep_sampler"])
        if self.ema is not None:
            # The checkpoint's step count, with the decay settings of this run.
            decay = {"decay": args.ema_max_decay, "inv_gamma": args.ema_inv_gamma, "power": args.ema_power}
            load_ema_state(self.ema, self.parameter_names(), path / EMA_WEIGHTS_FILE, {**state["ema"], **decay})
        load_generators(self.step_fn.generators, path, self.accelerator.process_index)
        self.global_step = state["global_step"]
        self.skipped_steps = state.get("skipped_steps", [])
        logger.info(f"Resumed from {path} at step {self.global_step}.", main_process_only=True)
        changed = changed_settings(state, args)
        if changed:
            logger.info(
                f"Changed settings, applied from step {self.global_step} on: {'; '.join(changed)}.",
                main_process_only=True,
            )

    def _log_resume_choice(self, choice: ResumeChoice) -> None:
        for path, reason in choice.rejected:
            logger.warning(f"Not resuming from {path}: {reason}", main_process_only=True)
        if not choice.verified:
            logger.warning(
                f"{choice.path} has no manifest (written by an earlier version): its files parse, but their "
                "integrity cannot be verified.",
                main_process_only=True,
            )

    def _check_resumable(self, state: dict[str, Any], path: Path) -> None:
        current = run_signature(self.args, self.setup, self.accelerator.num_processes)
        differences, unrecorded = signature_differences(state, current)
        differences += loss_scaler_difference(path, state, self.args.mixed_precision)
        if differences:
            raise ValueError(
                f"Cannot resume from {path}: the run differs in {'; '.join(differences)}. These settings define the "
                "model, its objective or its data; keep them, or start a new run in another --output_dir."
            )
        if unrecorded:
            logger.warning(
                f"{path} does not record {', '.join(unrecorded)} (an earlier version): not checked.",
                main_process_only=True,
            )

    # ----------------------------------------------------------------------------------------- divergence

    def check_finite_weights(self) -> None:
        """TrainingError unless the weights (and their EMA) are finite on every process: nothing non-finite is saved."""
        tensors = [*self.unet.parameters(), *(self.ema.shadow_params if self.ema is not None else ())]
        bad = torch.tensor(float(not all_finite(tensors)), device=self.accelerator.device)
        if self.accelerator.reduce(bad, "sum").item():
            raise TrainingError(self.divergence_message("the weights are not finite"))

    def record_nonfinite_step(self, part: str) -> None:
        """After a step whose `part` ("loss", "gradient") was not finite, and which therefore changed nothing: log
        it as skipped while --skip_nonfinite_steps allows, else stop with a TrainingError."""
        self.skipped_steps.append({"step": self.global_step, "reason": f"non-finite {part}"})
        allowed = self.args.skip_nonfinite_steps
        if len(self.skipped_steps) > allowed:
            what = f"the {part} is not finite"
            if allowed:
                what += f" ({len(self.skipped_steps)} bad batches, more than --skip_nonfinite_steps {allowed})"
            raise TrainingError(self.divergence_message(what))
        logger.warning(
            f"step {self.global_step}: the {part} is not finite; skipped the batch without an update "
            f"({len(self.skipped_steps)} of at most {allowed}, --skip_nonfinite_steps).",
            main_process_only=True,
        )

    def divergence_message(self, what: str) -> str:
        """One line: the step, what is not finite, the likely causes and the checkpoint to resume from."""
        args = self.args
        causes = [f"a learning rate too high (--learning_rate {args.learning_rate:g})"]
        if args.max_grad_norm == 0:
            causes.append("no gradient clipping (--max_grad_norm 0)")
        if args.mixed_precision == "fp16":
            causes.append("fp16 overflow (try --mixed_precision bf16 or no)")
        causes.append("bad data (NaN or infinite pixels)")
        latest = latest_checkpoint(args.output_dir)
        resume = (
            f"the last checkpoint, {latest}, is finite: change the settings and resume with "
            f"--resume_from_checkpoint {latest}"
            if latest is not None
            else "there is no checkpoint to resume from"
        )
        return (
            f"Training diverged at step {self.global_step}: {what}. Likely causes: {'; '.join(causes)}. No checkpoint "
            f"or pipeline was written from it; {resume}, or skip up to N bad batches with --skip_nonfinite_steps N."
        )

    # ----------------------------------------------------------------------------------------- evaluation

    def evaluation_unet(self) -> UNet2DModel:
        """The float32 evaluation network, loaded with the EMA weights (or the raw weights without EMA)."""
        if self.ema is not None:
            self.ema.copy_to(self.eval_unet.parameters())
        else:
            self.eval_unet.load_state_dict(self.unet.state_dict())
        return self.eval_unet

    def pipeline(self, unet: UNet2DModel) -> DDPMPlusPipeline:
        scheduler = DDPMPlusScheduler.from_config(self.setup.noise_scheduler.config)
        pipeline = DDPMPlusPipeline(unet=unet, scheduler=scheduler)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def sample_grid(self, pipeline: DDPMPlusPipeline) -> Image.Image:
        args = self.args
        generator = torch.Generator(device=self.accelerator.device).manual_seed(args.seed)
        images = pipeline(
            batch_size=args.num_grid_images,
            generator=generator,
            num_inference_steps=inference_steps(args),
            output_type="pt",
        ).images
        grid = make_grid(images * 2 - 1, nrow=math.ceil(math.sqrt(args.num_grid_images)))
        scale = max(1, math.ceil(MIN_GRID_SIDE / min(grid.size)))
        return grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)

    def heldout_bpd(self, unet: UNet2DModel) -> BoundEstimate:
        """Unbiased estimate of the held-out bits/dim (eq. 5), stratified over timesteps with a pilot profile."""
        args = self.args
        images = self.setup.eval_images.to(self.accelerator.device)
        scheduler = self.setup.noise_scheduler
        common = {"max_batch_size": args.eval_batch_size, "progress": False}
        profile = pilot_profile(
            unet, images[:16], scheduler, generator=torch.Generator().manual_seed(args.seed), **common
        )
        return estimate_bound(
            unet,
            images,
            scheduler,
            num_strata=args.bpd_strata,
            samples_per_stratum=args.bpd_samples_per_stratum,
            profile=profile,
            generator=torch.Generator().manual_seed(args.seed + 1),
            **common,
        )

    def evaluate(self, *, images: bool, bpd: bool, final: bool = False) -> dict[str, Any]:
        """Sample grid and/or held-out bits/dim on the main process; the others wait."""
        results: dict[str, Any] = {}
        if self.accelerator.is_main_process and (images or (bpd and self.setup.eval_images is not None)):
            unet = self.evaluation_unet()
            if images:
                results["grid"] = self.save_grid(self.sample_grid(self.pipeline(unet)), final)
            if bpd and self.setup.eval_images is not None:
                results["bpd"] = self.record_bpd(self.heldout_bpd(unet), final)
        self.accelerator.wait_for_everyone()
        return results

    def save_grid(self, grid: Image.Image, final: bool) -> Path:
        output_dir = Path(self.args.output_dir)
        path = output_dir / "samples.png" if final else output_dir / "samples" / f"step-{self.global_step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        _log_image(self.accelerator, "samples", grid, self.global_step)
        return path

    def record_bpd(self, estimate: BoundEstimate, final: bool) -> dict[str, Any]:
        low, high = estimate.mean_interval(0.95)
        record = {
            "step": self.global_step,
            "bits_per_dim": estimate.mean_bpd,
            "standard_error": estimate.mean_standard_error,
            "confidence_interval_95": [low, high],
            "prior_bpd": estimate.prior_bpd.mean().item(),
            "decoder_bpd": estimate.decoder_bpd.mean().item(),
            "num_images": len(estimate.total_bpd),
            "split": eval_split(self.args),
            "weights": "ema" if self.ema is not None else "raw",
            "estimator": "ddpm_plus.likelihood.estimate_bound (stratified importance sampling over timesteps)",
            "num_strata": self.args.bpd_strata,
            "samples_per_stratum": self.args.bpd_samples_per_stratum,
            "network_evaluations": estimate.num_evaluations,
        }
        self.accelerator.log(
            {"bpd/heldout": record["bits_per_dim"], "bpd/standard_error": record["standard_error"]},
            step=self.global_step,
        )
        logger.info(
            f"step {self.global_step}: held-out {record['bits_per_dim']:.4f} ± {record['standard_error']:.4f} bits/dim",
            main_process_only=True,
        )
        if final:
            write_json(Path(self.args.output_dir) / "bpd.json", record)
        return record


def _log_image(accelerator: Accelerator, name: str, image: Image.Image, step: int) -> None:
    pixels = np.asarray(image.convert("RGB"))[None]
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({name: pixels}, step=step, dataformats="NHWC")


# --------------------------------------------------------------------------------------------- building the run


def build_trainer(args: argparse.Namespace, setup: RunSetup, accelerator: Accelerator) -> Trainer:
    batch_sampler = ShardedBatchSampler(
        len(setup.train_set),
        args.train_batch_size,
        num_processes=accelerator.num_processes,
        process_index=accelerator.process_index,
        accumulation_steps=args.gradient_accumulation_steps,
        seed=args.seed,
    )
    max_train_steps = resolve_max_train_steps(args, batch_sampler.steps_per_epoch)
    set_seed(args.seed)  # the same initial weights on every process
    unet = UNet2DModel.from_config(setup.unet_config)
    if args.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(
        list(unet.parameters()),
        learning_rate=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
        device=accelerator.device,
    )
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps, num_training_steps=max_train_steps
    )
    model, optimizer = accelerator.prepare(unet, optimizer)
    if args.compile:  # after prepare: checkpoints keep the plain parameter names, with or without --compile
        model = torch.compile(model)
    eval_unet = None
    if accelerator.is_main_process:  # built here, so that evaluations never draw from the training RNG
        eval_unet = UNet2DModel.from_config(setup.unet_config).to(accelerator.device).float().eval()
    set_seed(args.seed, device_specific=True)  # dropout and augmentation differ between processes
    ema = None
    if args.use_ema:
        ema = EMAModel(
            unet.parameters(),
            decay=args.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=args.ema_inv_gamma,
            power=args.ema_power,
            foreach=True,
        )
    objective = DiffusionObjective(
        setup.noise_scheduler,
        create_timestep_sampler(args.timestep_sampler, args.num_train_timesteps),
        loss_type=args.loss,
        snr_gamma=args.snr_gamma,
        vlb_weight=args.vlb_weight,
        channels_last=args.channels_last,
    )
    step_fn = TrainingStep(
        accelerator,
        model,
        optimizer,
        lr_scheduler,
        objective,
        TrainingGenerators.create(args.seed, accelerator.process_index, accelerator.device),
        ema=ema,
        max_grad_norm=args.max_grad_norm,
    )
    return Trainer(args, setup, accelerator, unet, step_fn, batch_sampler, max_train_steps, eval_unet)


def configure_backends(args: argparse.Namespace) -> int:
    """Torch threads, TF32 on CUDA and deterministic algorithms; returns the thread count."""
    threads = torch_threads_per_process(args.num_threads)
    torch.set_num_threads(threads)
    if torch.cuda.is_available() and args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when the first cuBLAS handle is made
        torch.use_deterministic_algorithms(True, warn_only=True)
    return threads


def tracker_config(args: argparse.Namespace) -> dict[str, Any]:
    """Public settings as tracker hyper-parameters (scalars and strings only)."""
    return {
        key: value if isinstance(value, int | float | str | bool) else str(value)
        for key, value in public_settings(args).items()
    }


# --------------------------------------------------------------------------------------------- the loop


class RunningLog:
    """Loss, gradient norm and throughput since the last log line, kept on the device until logged."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), device=self.trainer.accelerator.device)
        self.steps = 0
        self.grad_norm: torch.Tensor | None = None
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> None:
        self.loss_sum += loss
        self.steps += 1
        self.grad_norm = grad_norm

    def flush(self, progress: tqdm) -> None:
        """Log the averages over all processes of the steps since the last line (skipped steps excluded)."""
        trainer = self.trainer
        if self.steps == 0:  # every step since the last line was skipped (and logged as such)
            return
        loss = (trainer.accelerator.reduce(self.loss_sum, "mean") / self.steps).item()
        elapsed = time.perf_counter() - self.started
        values = {
            "train/loss": loss,
            "train/lr": trainer.step_fn.lr_scheduler.get_last_lr()[0],
            "train/images_per_second": self.steps * trainer.batch_sampler.images_per_step / elapsed,
            "train/epoch": trainer.global_step / trainer.batch_sampler.steps_per_epoch,
        }
        if self.grad_norm is not None:
            values["train/grad_norm"] = float(self.grad_norm)
        trainer.accelerator.log(values, step=trainer.global_step)
        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{values['train/lr']:.2e}")
        self.reset()


def due(step: int, every: int, last_step: int) -> bool:
    """Whether a periodic action runs after `step`: every `every` steps (0: never) and not at the last step."""
    return every > 0 and step % every == 0 and step != last_step


def train(trainer: Trainer) -> None:
    args, accelerator = trainer.args, trainer.accelerator
    batches = optimizer_step_batches(
        trainer.setup.train_set,
        trainer.batch_sampler,
        first_step=trainer.global_step,
        num_workers=args.dataloader_num_workers,
        pin_memory=accelerator.device.type == "cuda",
    )
    running = RunningLog(trainer)
    # As a context, the bar is closed before an error is printed.
    with tqdm(
        total=trainer.max_train_steps,
        initial=trainer.global_step,
        desc="training",
        unit="step",
        disable=not accelerator.is_local_main_process,
    ) as progress:
        while trainer.global_step < trainer.max_train_steps:
            micro_batches, indices = next(batches)
            output = trainer.step_fn(_debug_nan_batches(args, accelerator, trainer.global_step + 1, micro_batches))
            trainer.global_step += 1
            progress.update(1)
            if output.nonfinite is None:
                running.add(output.loss, output.grad_norm)
            else:
                trainer.record_nonfinite_step(output.nonfinite)
            _record_indices(args, accelerator, trainer.global_step, indices)
            step, last = trainer.global_step, trainer.max_train_steps
            if step % args.logging_steps == 0 or step == last:
                running.flush(progress)
            if due(step, args.save_images_steps, last) or due(step, args.bpd_steps, last):
                trainer.check_finite_weights()
                trainer.evaluate(images=due(step, args.save_images_steps, last), bpd=due(step, args.bpd_steps, last))
            if args.checkpointing_steps and (step % args.checkpointing_steps == 0 or step == last):
                trainer.save_checkpoint()
            if step == args.debug_kill_after_step:
                os.kill(os.getpid(), signal.SIGKILL)


def _debug_nan_batches(
    args: argparse.Namespace, accelerator: Accelerator, step: int, micro_batches: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Test aid: NaN images on the last process at the steps of --debug_nan_batch_steps."""
    if step in args.debug_nan_batch_steps and accelerator.process_index == accelerator.num_processes - 1:
        return [torch.full_like(batch, math.nan) for batch in micro_batches]
    return micro_batches


def _record_indices(args: argparse.Namespace, accelerator: Accelerator, step: int, indices: list[list[int]]) -> None:
    if args.debug_record_dir is not None:
        path = Path(args.debug_record_dir) / f"indices_{accelerator.process_index}.jsonl"
        with path.open("a") as handle:
            handle.write(json.dumps({"step": step, "indices": indices}) + "\n")


def _record_final_weights(trainer: Trainer) -> None:
    if trainer.args.debug_record_dir is not None:
        tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in trainer.unet.state_dict().items()}
        if trainer.ema is not None:
            names = trainer.parameter_names()
            tensors |= {
                f"ema.{n}": s.detach().cpu().contiguous() for n, s in zip(names, trainer.ema.shadow_params, strict=True)
            }
        save_file(
            tensors,
            str(Path(trainer.args.debug_record_dir) / f"weights_{trainer.accelerator.process_index}.safetensors"),
        )


# --------------------------------------------------------------------------------------------- outputs


def save_outputs(trainer: Trainer) -> None:
    """The EMA pipeline, `samples.png`, `bpd.json` and the model card in --output_dir; optionally push to the Hub.

    Only finite weights are evaluated and saved; a failed write (a full disk) is one line naming the intact checkpoint.
    """
    trainer.check_finite_weights()
    args = trainer.args
    with explained_write_errors("the final outputs", Path(args.output_dir)):
        results = trainer.evaluate(images=True, bpd=True, final=True)
        if not trainer.accelerator.is_main_process:
            return
        pipeline = trainer.pipeline(trainer.evaluation_unet())
        pipeline.save_pretrained(args.output_dir)
        card = model_card_arguments(trainer, results)
        write_model_card(args.output_dir, repo_id=args.hub_model_id, **card)
    if args.push_to_hub:
        repo_id = hub_repo_id(args)
        push_pipeline_to_hub(pipeline, repo_id, token=args.hub_token, private=args.hub_private_repo, **card)
        logger.info(f"Pushed the pipeline to the Hub repository {repo_id}.", main_process_only=True)


def model_card_arguments(trainer: Trainer, results: dict[str, Any]) -> dict[str, Any]:
    """Held-out bits/dim, public training settings, data set name and sample grid for `write_model_card`."""
    bpd = results.get("bpd")
    resolution = trainer.setup.resolution
    return {
        "bits_per_dim": None if bpd is None else bpd["bits_per_dim"],
        "bits_per_dim_standard_error": None if bpd is None else bpd["standard_error"],
        "training_args": public_settings(trainer.args),
        "dataset_name": data_source(trainer.args) or f"UCI handwritten digits ({resolution}x{resolution})",
        "sample_grid": results["grid"],
    }


# --------------------------------------------------------------------------------------------- main


def prepare_output_dir(args: argparse.Namespace, accelerator: Accelerator) -> None:
    """Create --output_dir (once nothing can fail on bad input) and remove checkpoint saves that a kill interrupted."""
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        for path in remove_unfinished_checkpoints(args.output_dir):
            logger.info(f"Removed {path}, the unfinished checkpoint of an interrupted save.", main_process_only=True)
    accelerator.wait_for_everyone()


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    setup = prepare_run(args)
    threads = configure_backends(args)
    accelerator = create_accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        project_dir=args.output_dir,
        report_to=None if args.report_to == "none" else args.report_to,
    )
    with process_group_lifetime(accelerator):
        trainer = build_trainer(args, setup, accelerator)
        prepare_output_dir(args, accelerator)
        trainer.resume()
        if args.debug_record_dir is not None:
            Path(args.debug_record_dir).mkdir(parents=True, exist_ok=True)
        accelerator.init_trackers("ddpm_plus", config=tracker_config(args))
        logger.info(
            f"{accelerator.num_processes} process(es) on {accelerator.device}, {threads} torch thread(s) each; "
            f"{len(setup.train_set)} training images, {trainer.batch_sampler.images_per_step} per step, "
            f"{trainer.batch_sampler.steps_per_epoch} steps per epoch, {trainer.max_train_steps} steps; "
            f"{sum(p.numel() for p in trainer.unet.parameters()):,} parameters.",
            main_process_only=True,
        )
        started = time.perf_counter()
        train(trainer)
        _record_final_weights(trainer)
        save_outputs(trainer)
        logger.info(
            f"Done in {time.perf_counter() - started:.0f} s; outputs in {args.output_dir}.", main_process_only=True
        )
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """The command line: `main`, with a user error or an explained failure (divergence, a full disk, a corrupt
    checkpoint) printed as one line on stderr and exit code 2; unexpected errors keep their traceback."""
    args = parse_args(argv)
    try:
        return main(args)
    except (ValueError, TrainingError) as error:
        rank = os.environ.get("RANK", "0")
        where = Path(__file__).name if rank == "0" else f"{Path(__file__).name} (process {rank})"
        print(f"{where}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(run())
