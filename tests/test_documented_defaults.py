"""Every default that the docs state is the code's: each row quotes a page and reads the value from the parser or
constant that decides it."""

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ddpm_plus import cli
from ddpm_plus.models import unet_config
from ddpm_plus.sharding import default_device
from ddpm_plus.training import arguments, build_parser, inference_steps, parse_args
from ddpm_plus.training.run_setup import build_noise_scheduler

ROOT = Path(__file__).resolve().parents[1]


def train_default(dest: str) -> Callable[[], Any]:
    return lambda: build_parser().get_default(dest)


def command_default(command: str, dest: str) -> Callable[[], Any]:
    def default() -> Any:
        subparsers = next(
            action for action in cli.build_parser()._actions if isinstance(action, argparse._SubParsersAction)
        )
        return subparsers.choices[command].get_default(dest)

    return default


def default_run(*flags: str) -> argparse.Namespace:
    return parse_args(["--output_dir", "runs/digits", *flags])


def resolved_variance_type(flags: list[str]) -> str:
    args = default_run(*flags)
    scheduler = build_noise_scheduler(args, unet_config(args.model_config, learn_sigma=args.learn_sigma))
    return scheduler.config.variance_type


DEFAULT_RUN_SENTENCE = (
    "default settings (2,000 steps of 64 images, T = 1000, linear betas, ε-prediction, AdamW 2e-3 with 100 warm-up "
    "steps and cosine decay, EMA with warm-up)"
)

ROWS = [
    ("training.md", "`--checkpointing_steps N` (default 500)", train_default("checkpointing_steps"), 500),
    ("training.md", "`--fid_num_samples` (default 1,000)", train_default("fid_num_samples"), 1000),
    ("training.md", "`--channels_last` (default on)", train_default("channels_last"), True),
    ("training.md", "`--eval_fid_every N` (off by default", train_default("eval_fid_every"), 0),
    ("training.md", "`--variance_type` (default `fixed_small`, `learned_range` with `--learn_sigma`)",
     lambda: [resolved_variance_type(flags) for flags in ([], ["--learn_sigma"])], ["fixed_small", "learned_range"]),
    ("training.md", "`--fid_num_reference` training images (default: all)", train_default("fid_num_reference"), None),
    ("training.md", "`--resolution` (default: the model's `sample_size`)", train_default("resolution"), None),
    ("training.md", "`--num_inference_steps` steps (the grids' setting; by default 250, a respaced chain, or T if "
     "smaller)", lambda: (inference_steps(default_run()), arguments.DEFAULT_INFERENCE_STEPS), (250, 250)),
    ("training.md", DEFAULT_RUN_SENTENCE, lambda: (
        arguments.DEFAULT_MAX_TRAIN_STEPS, *[vars(default_run())[name] for name in (
            "max_train_steps", "train_batch_size", "num_train_timesteps", "beta_schedule", "prediction_type",
            "learning_rate", "lr_warmup_steps", "lr_scheduler", "use_ema")]),
     (2000, None, 64, 1000, "linear", "epsilon", 2e-3, 100, "cosine", True)),
    ("training.md", "held-out bits/dim, a sample grid of 64 images and a checkpoint every 1,000, 1,000 and 500 steps",
     lambda: [train_default(name)() for name in ("bpd_steps", "num_grid_images", "save_images_steps",
                                                  "checkpointing_steps")], [1000, 64, 1000, 500]),
    ("evaluation.md", "`--steps` (default all T)", command_default("sample", "steps"), None),
    ("evaluation.md", "`--samples-split`/`--reference-split` (default `train`)",
     lambda: (command_default("fid", "samples_split")(), command_default("fid", "reference_split")()), ("train",) * 2),
    ("evaluation.md", "`--metrics fid,is,kid,pr`, all by default", command_default("fid", "metrics"),
     ("fid", "is", "kid", "pr")),
    ("evaluation.md", "`--device` defaults to `cuda` when a GPU is available, else `cpu`",
     lambda: [command_default(command, "device")() for command in ("sample", "bpd", "fid")], [None] * 3),
    ("likelihood.md", "`--num-probes` (default 1), `--draws` (default 2, so that the draws' standard error is "
     "reported), `--rtol` and `--atol` (default 1e-5)",
     lambda: [cli.ODE_OPTIONS[name] for name in ("num_probes", "draws", "rtol", "atol")], [1, 2, 1e-5, 1e-5]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("page", "quote", "code_value", "stated"), ROWS, ids=[f"{row[0]}:{row[1][:40]}" for row in ROWS]
)
def test_a_stated_default_is_the_codes(page: str, quote: str, code_value: Callable[[], Any], stated: Any) -> None:
    text = " ".join((ROOT / "docs" / page).read_text(encoding="utf-8").split())
    assert quote in text, f"{page} no longer says {quote!r}: update this row"
    assert code_value() == stated


def test_a_device_left_unset_is_resolved_as_the_docs_say() -> None:
    """None above means: cuda when available, else cpu."""
    assert default_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert default_device("cpu") == "cpu"
