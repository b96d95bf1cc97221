"""The command line of the training script: every flag, the checks that run before any work, and what the flags
resolve to (the held-out split, the grid's sampling steps, the number of optimizer steps, tracker settings)."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ddpm_plus.cli import (
    HelpFormatter,
    check_extra_installed,
    check_finite_arguments,
    check_output_directory,
    check_output_file,
    check_seed,
    check_text_arguments,
    thread_count,
)
from ddpm_plus.extras import import_extra, source_constants
from ddpm_plus.models import available_configs
from ddpm_plus.utils import public_settings

# The choices of modules that import torch and diffusers, read from their source: `--help` answers at once.
_SCHEDULER = source_constants("ddpm_plus.scheduling_ddpm_plus")
BETA_SCHEDULES, LOSS_TYPES = _SCHEDULER["BETA_SCHEDULES"], _SCHEDULER["LOSS_TYPES"]
PREDICTION_TYPES, VARIANCE_TYPES = _SCHEDULER["PREDICTION_TYPES"], _SCHEDULER["VARIANCE_TYPES"]
INTERPOLATED_BETA_SCHEDULES = _SCHEDULER["INTERPOLATED_BETA_SCHEDULES"]
TIMESTEP_SAMPLERS = source_constants("ddpm_plus.timestep_samplers")["TIMESTEP_SAMPLERS"]

DEFAULT_MAX_TRAIN_STEPS = 2000
"""Optimizer steps when neither --max_train_steps nor --num_epochs is given (the digits demo's budget)."""
DEFAULT_INFERENCE_STEPS = 250
"""Sampling steps of the sample grids unless given: the respaced chain keeps grids cheap during training."""

# diffusers' schedules, less those that need settings this script does not take (piecewise_constant's step rules).
LR_SCHEDULERS = tuple(
    name
    for name in source_constants("diffusers.optimization", "SchedulerType").values()
    if name != "piecewise_constant"
)
MIN_TRAIN_TIMESTEPS = 2
"""The held-out bits/dim needs the decoder term (t = 0) and at least one KL term; T = 1 would fail after training."""
# What a run writes into --output_dir besides its checkpoints: checked before the first step.
OUTPUT_FILES = ("samples.png", "bpd.json", "bound.png", "fid.json", "fid_reference.npz", "README.md")
OUTPUT_FILES += ("model_index.json",)
OUTPUT_DIRECTORIES = ("unet", "scheduler", "samples", "logs")
PRETRAINED_OPTION = "--pretrained_model_name_or_path"
# The flags that describe the model and its diffusion: when fine-tuning they come from the pretrained model.
PRETRAINED_MODEL_FLAGS = (
    "model_config",
    "learn_sigma",
    "resolution",
    "num_train_timesteps",
    "beta_schedule",
    "beta_start",
    "beta_end",
    "prediction_type",
    "variance_type",
)


# --------------------------------------------------------------------------------------------- the flags


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The training script's parser; `description` heads its --help."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    _add_data_arguments(parser.add_argument_group("data"))
    _add_model_arguments(parser.add_argument_group("model and objective"))
    _add_optimization_arguments(parser.add_argument_group("optimization"))
    _add_output_arguments(parser.add_argument_group("outputs, evaluation and logging"))
    _add_checkpoint_arguments(parser.add_argument_group("checkpoints"))
    _add_hub_arguments(parser.add_argument_group("Hugging Face Hub"))
    return parser


def _add_data_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--dataset_name",
        default=None,
        help="A 🤗 datasets name or path (read offline from the local cache with HF_DATASETS_OFFLINE=1), or a "
        "directory written by save_to_disk. Default: the embedded digits.",
    )
    group.add_argument(
        "--train_data_dir", default=None, help="A folder of images (searched recursively). Default: the digits."
    )
    group.add_argument("--cache_dir", default=None, help="🤗 datasets cache directory (default: 🤗 datasets' own).")
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
    group.add_argument(
        "--num_eval_images", type=int, default=None, help="Held-out images to evaluate (default: all of them)."
    )
    group.add_argument("--dataloader_num_workers", type=int, default=0, help="Data loader worker processes.")


def _add_model_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--pretrained_model_name_or_path",
        default=None,
        help="Fine-tune: start from the UNet weights and the scheduler config of a saved ddpm_plus or diffusers "
        "DDPMPipeline folder, a folder written by `ddpm-plus convert`, or a Hub id (e.g. google/ddpm-cifar10-32). "
        "The model flags below then come from it; giving one with another value is refused. Default: none, a new "
        "model from --model_config.",
    )
    group.add_argument(
        "--model_config",
        "--model_config_name_or_path",
        default="digits-16",
        help=f"A named UNet config ({', '.join(available_configs())}) or a JSON UNet2DModel config file.",
    )
    group.add_argument("--learn_sigma", action="store_true", help="Also learn the variances (doubled output channels).")
    group.add_argument(
        "--prediction_type", default="epsilon", choices=PREDICTION_TYPES, help="What the UNet predicts: ε, x_0, v or μ."
    )
    group.add_argument(
        "--variance_type",
        default=None,
        choices=VARIANCE_TYPES,
        help="The reverse process's variances. Default: fixed_small, or learned_range when the model learns sigma.",
    )
    group.add_argument("--loss", default="simple", choices=LOSS_TYPES, help="simple (eq. 14), vlb, hybrid or kl.")
    group.add_argument(
        "--beta_schedule",
        "--ddpm_beta_schedule",
        default="linear",
        choices=BETA_SCHEDULES,
        help="The noise schedule β_t.",
    )
    group.add_argument("--beta_start", type=float, default=1e-4, help="β_1 of the linear-type schedules.")
    group.add_argument("--beta_end", type=float, default=0.02, help="β_T of the linear-type schedules.")
    group.add_argument(
        "--num_train_timesteps", "--ddpm_num_steps", type=int, default=1000, help="T, the diffusion steps."
    )
    group.add_argument(
        "--timestep_sampler",
        default="uniform",
        choices=TIMESTEP_SAMPLERS,
        help="How training draws t: uniformly, or by the loss's second moment (importance sampling).",
    )
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
    group.add_argument(
        "--num_epochs",
        type=int,
        default=None,
        help=f"Epochs, when --max_train_steps is not given (default: neither, so {DEFAULT_MAX_TRAIN_STEPS} steps).",
    )
    group.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Micro-batches per optimizer step.")
    group.add_argument("--learning_rate", type=float, default=2e-3, help="Peak learning rate of AdamW.")
    group.add_argument(
        "--lr_scheduler", default="cosine", choices=LR_SCHEDULERS, help="diffusers' learning-rate schedule."
    )
    group.add_argument("--lr_warmup_steps", type=int, default=100, help="Linear warm-up steps of the learning rate.")
    group.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW β1.")
    group.add_argument("--adam_beta2", type=float, default=0.999, help="AdamW β2.")
    group.add_argument("--adam_weight_decay", type=float, default=0.0, help="AdamW weight decay.")
    group.add_argument("--adam_epsilon", type=float, default=1e-8, help="AdamW ε.")
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
    group.add_argument("--ema_max_decay", type=float, default=0.9999, help="Largest EMA decay (after warm-up).")
    group.add_argument("--ema_inv_gamma", type=float, default=1.0, help="EMA warm-up: decay 1 - (1 + step/γ)^-p.")
    group.add_argument("--ema_power", type=float, default=0.75, help="EMA warm-up power p.")
    group.add_argument(
        "--mixed_precision", default="no", choices=("no", "fp16", "bf16"), help="accelerate's autocast precision."
    )
    group.add_argument("--seed", type=int, default=0, help="Seed of the initial weights, the data order and the noise.")
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
        type=thread_count,
        default=None,
        help="Torch threads per process (default: the CPU cores divided among this machine's processes).",
    )


def _add_output_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--output_dir", required=True, help="Pipeline, samples, bits/dim, logs and checkpoints.")
    group.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="Start a new run in an --output_dir that holds the checkpoints or the pipeline of an earlier run "
        "(default: refuse it). Its checkpoints are removed when this run writes its first checkpoint (or, without "
        "checkpoints, its pipeline), its pipeline when this run saves its own.",
    )
    group.add_argument("--report_to", "--logger", default="tensorboard", help="accelerate tracker, or 'none'.")
    group.add_argument("--logging_steps", type=int, default=10, help="Log the losses every N steps.")
    group.add_argument(
        "--save_images_steps", type=int, default=1000, help="Sample grid every N steps (0: only at the end)."
    )
    group.add_argument("--num_grid_images", type=int, default=64, help="Images of each sample grid.")
    group.add_argument(
        "--num_inference_steps",
        "--ddpm_num_inference_steps",
        type=int,
        default=None,
        help=f"Sampling steps of the grids (default: {DEFAULT_INFERENCE_STEPS} or T if smaller; fewer than T "
        "respace the chain).",
    )
    group.add_argument(
        "--bpd_steps", type=int, default=1000, help="Held-out bits/dim every N steps (0: only at the end)."
    )
    group.add_argument("--bpd_strata", type=int, default=24, help="Timestep strata of the bits/dim estimator.")
    group.add_argument(
        "--bpd_samples_per_stratum", type=int, default=2, help="Draws per stratum of the bits/dim estimator (≥ 2)."
    )
    group.add_argument("--eval_batch_size", type=int, default=256, help="Images per network call in evaluation.")
    group.add_argument(
        "--eval_fid_every",
        type=int,
        default=0,
        help="FID of samples against the training images every N steps and at the end (0: never; needs "
        "ddpm_plus[eval]).",
    )
    group.add_argument("--fid_num_samples", type=int, default=1000, help="Samples of each FID evaluation.")
    group.add_argument(
        "--fid_num_reference", type=int, default=None, help="Training images of the FID reference (default: all)."
    )
    group.add_argument(
        "--fid_feature_extractor",
        default="inception",
        help="'inception' (torch-fidelity's InceptionV3, TensorFlow FID weights) or module.path:name of a "
        "torch.nn.Module (see `ddpm-plus fid --help`).",
    )
    group.add_argument(
        "--fid_feature_extractor_weights",
        default=None,
        help="A local copy of the Inception weights (default: torch-fidelity downloads them).",
    )


def _add_checkpoint_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--checkpointing_steps", type=int, default=500, help="Checkpoint every N steps (0: never).")
    group.add_argument(
        "--checkpoints_total_limit", type=int, default=None, help="Keep the newest N checkpoints (default: all)."
    )
    group.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help="'latest' (the newest finished checkpoint in --output_dir, if any) or a checkpoint directory (default: "
        "start a new run).",
    )


def _add_hub_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--push_to_hub", action="store_true", help="Upload the pipeline with its model card.")
    group.add_argument("--hub_model_id", default=None, help="Repository id (default: the output_dir's name).")
    group.add_argument("--hub_private_repo", action="store_true", help="Create the Hub repository as private.")
    group.add_argument(
        "--hub_token",
        default=None,
        help="Visible to other users of this machine: prefer HF_TOKEN or `huggingface-cli login` (default: those).",
    )


def parse_args(argv: Sequence[str] | None = None, *, description: str | None = None) -> argparse.Namespace:
    """Parse the training script's command line (`sys.argv[1:]` by default); argparse exits with code 2 on bad
    syntax. The values are checked later, by `check_arguments`. When fine-tuning (--pretrained_model_name_or_path)
    the model flags that were not given are None: they come from the pretrained model (`prepare_run`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(description)
    args = parser.parse_args(argv)
    given = given_flags(argv)
    if args.pretrained_model_name_or_path is not None:
        for name in PRETRAINED_MODEL_FLAGS:
            if name not in given:
                setattr(args, name, None)
    try:
        check_text_arguments(args, flag_name)
        check_finite_arguments(args, flag_name)
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    for message in flags_without_effect(args, given):
        parser.exit(2, f"{parser.prog}: error: {message}\n")  # one line, as every other user error
    return args


def flag_name(dest: str) -> str:
    return f"--{dest}"


def given_flags(argv: Sequence[str]) -> set[str]:
    """The flags (destinations) that `argv` gives explicitly, whatever their defaults."""
    parser = build_parser()
    for action in parser._actions:  # the same options, none with a default
        action.default, action.required = argparse.SUPPRESS, False
    return set(vars(parser.parse_known_args(argv)[0]))


def flags_without_effect(args: argparse.Namespace, given: set[str]) -> list[str]:
    """A message for each flag that `given` sets but the other settings ignore: refused, so that no run records a
    setting as if it had applied."""
    rules = [
        (("beta_start", "beta_end"), args.beta_schedule in (None, *INTERPOLATED_BETA_SCHEDULES),
         f"--beta_schedule {args.beta_schedule} does not use it (only {', '.join(INTERPOLATED_BETA_SCHEDULES)} "
         "run from beta_start to beta_end)"),
        (("vlb_weight",), args.loss == "hybrid", f"it weights the VLB term of --loss hybrid, not --loss {args.loss}"),
        (("snr_gamma",), args.loss in ("simple", "hybrid"),
         f"it weights the MSE term of --loss simple or hybrid, not --loss {args.loss}"),
        (("ema_max_decay", "ema_inv_gamma", "ema_power"), args.use_ema, "--no-use_ema keeps no EMA"),
        (("image_column", "cache_dir"), args.dataset_name is not None,
         f"it applies to 🤗 datasets (--dataset_name), not to {data_source(args) or 'the embedded digits'}"),
        (("fid_num_samples", "fid_num_reference", "fid_feature_extractor", "fid_feature_extractor_weights"),
         args.eval_fid_every > 0, "it applies with --eval_fid_every N only"),
        (("checkpoints_total_limit",), args.checkpointing_steps > 0, "--checkpointing_steps 0 writes no checkpoints"),
        (("hub_private_repo", "hub_token"), args.push_to_hub, "it applies with --push_to_hub only"),
        (("lr_warmup_steps",), args.lr_scheduler != "constant", "--lr_scheduler constant has no warm-up"),
        (("num_epochs",), args.max_train_steps is None, "--max_train_steps sets the length of the run"),
    ]  # fmt: skip
    return [
        f"--{name} has no effect here: {reason}; leave it out."
        for names, applies, reason in rules
        if not applies
        for name in names
        if name in given
    ]


# --------------------------------------------------------------------------------------------- checks


def check_arguments(args: argparse.Namespace) -> None:
    """ValueError for inconsistent arguments and unwritable outputs, before anything is loaded or trained."""
    if args.dataset_name and args.train_data_dir:
        raise ValueError("Give --dataset_name or --train_data_dir, not both.")
    if args.overwrite_output_dir and args.resume_from_checkpoint is not None:
        raise ValueError(
            "Give --overwrite_output_dir (a new run replacing the earlier one) or --resume_from_checkpoint (continuing "
            "it), not both."
        )
    _check_ranges(args)
    if args.num_train_timesteps is not None:  # None: it comes from the pretrained model (check_timesteps then)
        check_timesteps(args)
    _check_tracker(args.report_to)
    check_extra_installed("matplotlib", "train", "training (the figure of the held-out bound, bound.png)")
    if args.eval_fid_every:
        check_extra_installed("torch_fidelity", "eval", "--eval_fid_every")
    check_output_locations(args)
    _check_hub_arguments(args)
    if args.hub_token is not None:
        warnings.warn(
            "--hub_token on the command line is visible to other users of this machine (process list, shell "
            "history); prefer the HF_TOKEN environment variable or `huggingface-cli login`.",
            stacklevel=2,
        )


def check_timesteps(args: argparse.Namespace) -> None:
    """ValueError unless T can give the held-out bound, and the grids' sampling steps fit in T. More strata of the
    held-out estimator than the T - 1 KL timesteps are cut to T - 1, with a warning (as the run applies them)."""
    if args.num_train_timesteps < MIN_TRAIN_TIMESTEPS:
        raise ValueError(
            f"--num_train_timesteps must be at least {MIN_TRAIN_TIMESTEPS} (the held-out bits/dim needs the decoder "
            f"term and at least one KL term), got {args.num_train_timesteps}."
        )
    if args.bpd_samples_per_stratum > args.num_train_timesteps - 1:
        raise ValueError(
            f"--bpd_samples_per_stratum {args.bpd_samples_per_stratum} exceeds the {args.num_train_timesteps - 1} KL "
            "timesteps of the chain: the exact bound would cost less."
        )
    kl_timesteps = args.num_train_timesteps - 1
    if args.bpd_strata > kl_timesteps:
        warnings.warn(
            f"--bpd_strata {args.bpd_strata} exceeds the {kl_timesteps} KL timesteps: the estimator uses "
            f"{kl_timesteps}.",
            stacklevel=2,
        )
        args.bpd_strata = kl_timesteps
    if args.num_inference_steps is not None and args.num_inference_steps > args.num_train_timesteps:
        raise ValueError(
            f"--num_inference_steps {args.num_inference_steps} exceeds the {args.num_train_timesteps} training "
            "timesteps."
        )


def _check_ranges(args: argparse.Namespace) -> None:
    positive = ("train_batch_size", "gradient_accumulation_steps", "logging_steps")
    positive += ("num_grid_images", "eval_batch_size", "bpd_strata")
    # num_train_timesteps and resolution are None when a pretrained model gives them
    optional_positive = ("max_train_steps", "num_epochs", "resolution", "num_eval_images", "num_inference_steps")
    optional_positive += ("num_train_timesteps",)
    optional_positive += ("checkpoints_total_limit",)
    non_negative = ("save_images_steps", "bpd_steps", "eval_fid_every", "checkpointing_steps", "lr_warmup_steps")
    non_negative += ("dataloader_num_workers", "max_grad_norm", "adam_weight_decay", "skip_nonfinite_steps")
    for name in positive + optional_positive:
        value = getattr(args, name)
        if (value is not None or name in positive) and value < 1:
            raise ValueError(f"--{name} must be positive, got {value}.")
    for name in non_negative:
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must not be negative, got {getattr(args, name)}.")
    # the grids and the held-out bound take seed and seed + 1, the FID's samples seed + i
    check_seed(args.seed, max(2, args.fid_num_samples if args.eval_fid_every else 0))
    if args.learning_rate <= 0:
        raise ValueError(f"--learning_rate must be positive, got {args.learning_rate}.")
    if args.bpd_samples_per_stratum < 2:
        raise ValueError("--bpd_samples_per_stratum must be at least 2 (the estimator needs a variance).")
    for name in ("fid_num_samples", "fid_num_reference"):
        value = getattr(args, name)
        if value is not None and value < 2:
            raise ValueError(f"--{name} must be at least 2 (the covariance of the features needs two), got {value}.")
    if args.snr_gamma is not None and args.snr_gamma <= 0:
        raise ValueError(f"--snr_gamma must be positive, got {args.snr_gamma}.")
    if not 0.0 <= args.ema_max_decay <= 1.0:
        raise ValueError(f"--ema_max_decay must lie in [0, 1], got {args.ema_max_decay}.")
    for name in ("ema_inv_gamma", "ema_power", "adam_epsilon"):  # the EMA warm-up divides by γ; p ≤ 0 never warms up
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}.")
    for name in ("adam_beta1", "adam_beta2"):
        if not 0.0 <= getattr(args, name) < 1.0:
            raise ValueError(f"--{name} must lie in [0, 1), got {getattr(args, name)}.")
    if args.vlb_weight < 0:
        raise ValueError(f"--vlb_weight must not be negative (it weights a KL term), got {args.vlb_weight}.")


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
    tracking = import_extra("accelerate.tracking", "train")
    known = [kind.value for kind in tracking.LoggerType if kind is not tracking.LoggerType.ALL]
    if report_to not in known:
        raise ValueError(f"--report_to {report_to}: unknown tracker; choose one of {', '.join(known)}, all or none.")
    if report_to not in [kind.value for kind in tracking.get_available_trackers()]:
        raise ValueError(f"--report_to {report_to} needs the {report_to} package: pip install {report_to}.")


# --------------------------------------------------------------------------------------------- resolved values


def data_source(args: argparse.Namespace) -> str | None:
    """The training data given (an image folder or a 🤗 dataset), or None for the embedded digits."""
    return args.train_data_dir or args.dataset_name


def dataset_description(args: argparse.Namespace, resolution: int) -> str:
    """The training data as the model card names it: the data source, or the embedded digits at `resolution`."""
    return data_source(args) or f"UCI handwritten digits ({resolution}x{resolution})"


def eval_split(args: argparse.Namespace) -> str | None:
    """The held-out split: given, or 'test' for the digits and for sources with a held-out fraction."""
    if args.eval_split is not None:
        return args.eval_split
    if data_source(args) is None or args.held_out_fraction > 0:
        return "test"
    return None


def inference_steps(args: argparse.Namespace) -> int:
    """Sampling steps of the sample grids: --num_inference_steps, else DEFAULT_INFERENCE_STEPS or T if smaller."""
    return args.num_inference_steps or min(DEFAULT_INFERENCE_STEPS, args.num_train_timesteps)


def resolve_max_train_steps(args: argparse.Namespace, steps_per_epoch: int) -> int:
    """Optimizer steps of the run: --max_train_steps, else --num_epochs epochs, else DEFAULT_MAX_TRAIN_STEPS."""
    if args.max_train_steps is not None:
        return args.max_train_steps
    if args.num_epochs is not None:
        return args.num_epochs * steps_per_epoch
    return DEFAULT_MAX_TRAIN_STEPS


def tracker_config(args: argparse.Namespace) -> dict[str, Any]:
    """Public settings as tracker hyper-parameters (scalars and strings only)."""
    return {
        key: value if isinstance(value, int | float | str | bool) else str(value)
        for key, value in public_settings(args).items()
    }
