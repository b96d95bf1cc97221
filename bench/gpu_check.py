#!/usr/bin/env python
"""One short GPU check of ddpm_plus (at most 8 minutes on one H100/H200), written as a JSON and a text report.

    python bench/gpu_check.py --out bench/results/gpu              # the GPU run: one CUDA device, <= 8 min
    python bench/gpu_check.py --dry-run --out /tmp/gpu-check-dry   # every part at toy size on the CPU, < 2 min
    python bench/gpu_check.py --parts a,d --out bench/results/gpu  # some parts only

The GPU run uses the 35.7M-parameter `ddpm-cifar10` UNet at 32x32 (random weights except in (b)); the dry run a
45k-parameter UNet at 16x16 (DRY_RUN_UNET_CONFIG), so that the whole script is known to work before a GPU is used.

(a) Training throughput in bf16, batch 128: our training step against diffusers' train_unconditional recipe in the
    same run (the loops of bench/train_throughput.py, alternated in rounds), then ours with torch.compile.
    Images/s, the ratio, each loop's peak memory and the dtype its convolutions ran in. Goal: >= 4,000 images/s
    and >= 1.2x the recipe.
(b) train_scripts/train.py in bf16 with --deterministic on the embedded digits (`ddpm-cifar10` at 32x32, RGB):
    200 steps uninterrupted, and a run killed (SIGKILL, sent as soon as its checkpoint at step 100 is on disk) and
    resumed with --resume_from_checkpoint latest. The final weights and EMA weights are compared (bitwise; max
    |difference|), with torch's warnings about ops that have no deterministic implementation.
(c) Sampling: DDPMPlusPipeline against diffusers' DDPMPipeline (same UNet, same seed), bitwise, with a CPU and a
    CUDA generator; fp16 and bf16 UNets give finite images; a CUDA generator with a CPU pipeline fails as in
    diffusers.
(d) Likelihood: the exact bound in fp32 on the device against float64 on the CPU (a 100-step chain, which keeps
    the CPU reference of the 35.7M UNet short), with TF32 off and on; evaluations/s of the exact bound (T = 1000).
(e) DDPMPlusPosteriorPipeline (inpainting, right half missing) in fp32 and bf16: finite images, images/s.
(f) The evaluation commands on the device, as a user runs them: `ddpm-plus sample` in float32 and bfloat16 (images/s,
    the .npz archive, a rerun that finds every image complete) and `ddpm-plus bpd` with the exact bound (evaluations/s,
    a finite report). Sharding over several GPUs needs several devices: it is tested on 2 CPU processes.

Each part runs under its own time budget (SIGALRM) inside its own try/except: a part that fails or overruns is
reported with status "failed", its error and what it measured until then, and the other parts still run. Exit code:
0 when no part failed, 1 otherwise, 2 without a CUDA device (unless --dry-run).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import accelerate
import diffusers
import numpy as np
import torch
from accelerate import Accelerator
from diffusers import DDPMPipeline, DDPMScheduler, DiffusionPipeline, UNet2DModel
from safetensors.torch import load_file
from train_throughput import build_diffusers_recipe, build_ours, measure, random_8bit_batches, synchronize

import ddpm_plus
from ddpm_plus import DDPMPlusPipeline, DDPMPlusPosteriorPipeline
from ddpm_plus.cli import main as ddpm_plus_command
from ddpm_plus.data import load_image_dataset
from ddpm_plus.likelihood import BoundResult, variational_bound
from ddpm_plus.models import unet_config
from ddpm_plus.scheduling_ddpm_plus import DDPMPlusScheduler
from ddpm_plus.training import EMA_WEIGHTS_FILE, latest_checkpoint
from ddpm_plus.utils import write_json

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "train_scripts" / "train.py"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"

OK, FAILED, NOT_AVAILABLE, SKIPPED = "ok", "failed", "not available", "skipped"
TRAIN_TIMESTEPS = 1000  # T of the training steps in (a), as in bench/train_throughput.py
GOAL_IMAGES_PER_S = 4000.0
GOAL_RATIO = 1.2
BPD_TOLERANCE = 1e-3
LEARNING_RATE = 2e-4  # the DDPM paper's CIFAR-10 rate (the script's default 2e-3 suits the small digits-16)
CPU_HINT = "run it on a GPU machine, or check the script on the CPU at toy sizes with --dry-run."
# torch's warnings under use_deterministic_algorithms(warn_only=True): "<op> does not have a deterministic
# implementation, ...", or e.g. "Memory Efficient attention defaults to a non-deterministic algorithm. ..."
DETERMINISM_WARNING = re.compile(r"UserWarning: ([^\n]*deterministic[^\n]*)")
WARNING_CHARACTERS = 160
KILL_POLL_SECONDS = 0.01  # how often (b) looks for the checkpoint after which it kills the run
# The dry run's UNet: digits-16's layout for 16x16 RGB images, cut to two levels of 8 and 16 channels (attention at
# 8x8 and in the middle block). 45,259 parameters: every part runs in seconds on a CPU.
DRY_RUN_UNET_CONFIG = unet_config(
    "digits-16",
    in_channels=3,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
)

Step = Callable[[torch.Tensor], None]
Result = TypeVar("Result")


# --------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Sizes:
    """What each part runs: the GPU sizes or the toy sizes of --dry-run."""

    model_config: str  # the name of the UNet of every part, for the report
    unet_config: dict[str, Any]  # its UNet2DModel config
    budgets_s: dict[str, float]  # seconds per part; the GPU budgets add up to well under 8 minutes
    # (a) training throughput
    train_batch_size: int
    steps_per_round: int
    rounds: int
    warmup_steps: int
    compile_backend: str
    # (b) checkpoint and resume: killed once the checkpoint at half the steps is written
    resume_steps: int
    resume_batch_size: int
    resume_timesteps: int
    resume_extra_args: tuple[str, ...]
    # (c) sampling and (e) posterior sampling
    sample_batch_size: int
    sample_steps: int
    posterior_steps: int
    # (d) likelihood: fp32 against float64 on a short chain; evaluations/s on the full chain
    check_images: int
    check_timesteps: int
    speed_images: int
    speed_timesteps: int
    likelihood_batch_size: int
    # (f) the evaluation commands
    command_images: int
    command_steps: int
    command_timesteps: int


# Each setting as (GPU run, dry run), side by side.
_SETTINGS: dict[str, tuple[Any, Any]] = {
    "model_config": ("ddpm-cifar10", "dry-run-tiny"),
    "unet_config": (unet_config("ddpm-cifar10"), DRY_RUN_UNET_CONFIG),
    "budgets_s": (
        {"a": 160, "b": 135, "c": 35, "d": 70, "e": 25, "f": 40},  # 7.75 minutes in all
        {"a": 60, "b": 90, "c": 30, "d": 30, "e": 30, "f": 30},
    ),
    "train_batch_size": (128, 8),
    "steps_per_round": (10, 2),
    "rounds": (5, 1),
    "warmup_steps": (3, 1),
    # aot_eager runs dynamo and AOTAutograd without code generation (inductor takes ~2 minutes on 2 CPU cores)
    "compile_backend": ("inductor", "aot_eager"),
    # (b) kills a run once its checkpoint at half the steps is written: the dry run's other 10 steps take ~0.5 s on a
    # CPU, ample time to kill it before its last checkpoint
    "resume_steps": (200, 20),
    "resume_batch_size": (64, 8),
    "resume_timesteps": (1000, 20),
    "resume_extra_args": ((), ("--num_threads", "1")),
    "sample_batch_size": (16, 2),
    "sample_steps": (250, 5),
    "posterior_steps": (100, 4),
    "check_images": (2, 2),
    "check_timesteps": (100, 10),
    "speed_images": (8, 1),
    "speed_timesteps": (1000, 20),
    "likelihood_batch_size": (500, 64),
    "command_images": (64, 4),
    "command_steps": (100, 3),
    "command_timesteps": (1000, 20),
}
GPU_SIZES, DRY_RUN_SIZES = (Sizes(**{name: values[run] for name, values in _SETTINGS.items()}) for run in (0, 1))


@dataclass(frozen=True)
class Context:
    device: torch.device
    sizes: Sizes
    dry_run: bool

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"


# --------------------------------------------------------------------------------------------- shared helpers


def gib(num_bytes: int) -> float:
    return num_bytes / 2**30


def new_unet(config: dict[str, Any], device: torch.device | str, dtype: torch.dtype = torch.float32) -> UNet2DModel:
    """The same randomly initialised UNet on every call (seed 0), in eval mode."""
    torch.manual_seed(0)
    return UNet2DModel.from_config(config).to(device=device, dtype=dtype).eval()


def held_out_digits(config: dict[str, Any], count: int) -> torch.Tensor:
    """The first `count` held-out digits at the model's size as RGB, on the 8-bit grid in [-1, 1], on the CPU."""
    dataset = load_image_dataset("digits", resolution=config["sample_size"], num_channels=3, split="test")
    return torch.stack([dataset[index] for index in range(count)])


def timed(function: Callable[[], Result], device: torch.device) -> tuple[Result, float]:
    """`function()` and its wall time in seconds, with the device synchronised on both ends."""
    synchronize(device)
    started = time.perf_counter()
    result = function()
    synchronize(device)
    return result, time.perf_counter() - started


def seeded_generator(device: torch.device | str) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(0)


# --------------------------------------------------------------------------------------------- (a) throughput


def conv_output_dtypes(step: Step, batch: torch.Tensor) -> list[str]:
    """Run one step and return the dtypes the convolutions produced (bfloat16 when autocast is on)."""
    dtypes: set[str] = set()

    def record(module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(module, torch.nn.Conv2d):
            dtypes.add(str(output.dtype).removeprefix("torch."))

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        step(batch)
    finally:
        handle.remove()
    return sorted(dtypes)


def build_and_first_step(
    build: Callable[[], Step], batch: torch.Tensor, device: torch.device, *, record_dtypes: bool
) -> tuple[Step, dict[str, Any]]:
    """Build a training loop and run its first step (optimizer state, compilation).

    Returns the loop and: the seconds of building and the first step, on CUDA the peak memory the loop took
    (weights, optimizer state, EMA and the step's working memory) and, with `record_dtypes`, the convolutions'
    output dtypes (a module hook would make a compiled model recompile, so compiled loops are not hooked).
    """
    on_cuda = device.type == "cuda"
    if on_cuda:
        synchronize(device)
        held_before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    step = build()
    info: dict[str, Any] = {}
    if record_dtypes:
        info["conv_dtypes"] = conv_output_dtypes(step, batch)  # runs the first step
    else:
        step(batch)
    synchronize(device)
    info["first_step_s"] = time.perf_counter() - started
    info["peak_memory_gib"] = gib(torch.cuda.max_memory_allocated(device) - held_before) if on_cuda else None
    return step, info


def throughput(seconds_per_step: float, batch_size: int) -> dict[str, float]:
    return {"images_per_s": batch_size / seconds_per_step, "ms_per_step": 1000 * seconds_per_step}


def check_training_throughput(context: Context, results: dict[str, Any]) -> str:
    sizes, device = context.sizes, context.device
    accelerator = Accelerator(cpu=not context.on_cuda, mixed_precision="bf16")
    config = sizes.unet_config
    batches = random_8bit_batches(config, sizes.train_batch_size, sizes.steps_per_round, accelerator.device)
    results.update(
        model_config=sizes.model_config,
        mixed_precision="bf16",
        batch_size=sizes.train_batch_size,
        timed_steps_per_loop=sizes.rounds * sizes.steps_per_round,
    )
    builders = {
        "ours": lambda: build_ours(accelerator, config, TRAIN_TIMESTEPS),
        "diffusers": lambda: build_diffusers_recipe(accelerator, config, TRAIN_TIMESTEPS),
    }
    loops: dict[str, Step] = {}
    for name, build in builders.items():
        loops[name], results[name] = build_and_first_step(build, batches[0], device, record_dtypes=True)
    threads = torch.get_num_threads()
    timing = {"warmup_steps": sizes.warmup_steps, "rounds": sizes.rounds}
    seconds = measure({name: (step, threads) for name, step in loops.items()}, batches, device, **timing)
    for name, value in seconds.items():
        results[name] |= throughput(value, sizes.train_batch_size)
    results["ratio_ours_to_diffusers"] = seconds["diffusers"] / seconds["ours"]

    def build_compiled() -> Step:
        return build_ours(accelerator, config, TRAIN_TIMESTEPS, compile_backend=sizes.compile_backend)

    compiled, results["ours_compiled"] = build_and_first_step(build_compiled, batches[0], device, record_dtypes=False)
    results["ours_compiled"]["compile_backend"] = sizes.compile_backend
    compiled_seconds = measure({"compiled": (compiled, threads)}, batches, device, **timing)["compiled"]
    results["ours_compiled"] |= throughput(compiled_seconds, sizes.train_batch_size)
    results["ratio_compiled_to_diffusers"] = seconds["diffusers"] / compiled_seconds
    if not context.dry_run:
        results["goals_met"] = {
            f"{name} >= {GOAL_IMAGES_PER_S:.0f} images/s and >= {GOAL_RATIO}x diffusers": (
                results[name]["images_per_s"] >= GOAL_IMAGES_PER_S and results[ratio] >= GOAL_RATIO
            )
            for name, ratio in (("ours", "ratio_ours_to_diffusers"), ("ours_compiled", "ratio_compiled_to_diffusers"))
        }
    return OK


# --------------------------------------------------------------------------------------------- (b) resume


def training_arguments(sizes: Sizes, output_dir: Path, config_file: Path) -> list[str]:
    """The training script's arguments of (b): the UNet config file, bf16, deterministic, checkpoints at half and at
    the end."""
    return [
        "--output_dir", str(output_dir), "--model_config", str(config_file), "--mixed_precision", "bf16",
        "--deterministic", "--max_train_steps", str(sizes.resume_steps),
        "--checkpointing_steps", str(sizes.resume_steps // 2), "--train_batch_size", str(sizes.resume_batch_size),
        "--num_train_timesteps", str(sizes.resume_timesteps), "--learning_rate", str(LEARNING_RATE),
        "--lr_warmup_steps", str(sizes.resume_steps // 4), "--save_images_steps", "0", "--bpd_steps", "0",
        "--num_grid_images", "4", "--num_inference_steps", "10", "--num_eval_images", "8", "--bpd_strata", "3",
        "--report_to", "none", *sizes.resume_extra_args,
    ]  # fmt: skip


def training_command(context: Context, arguments: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command and the environment that run the training script on the context's device."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if not context.on_cuda:
        environment["CUDA_VISIBLE_DEVICES"] = ""
    return [sys.executable, str(TRAIN_SCRIPT), *arguments], environment


def run_training(context: Context, arguments: list[str]) -> tuple[str, float]:
    """Run the training script as a subprocess; its stderr (the log) and wall time. RuntimeError unless it succeeds."""
    command, environment = training_command(context, arguments)
    started = time.perf_counter()
    result = subprocess.run(command, env=environment, capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"train.py exited with {result.returncode}: {result.stderr[-2000:]}")
    return result.stderr, time.perf_counter() - started


def run_training_until(context: Context, arguments: list[str], checkpoint: Path) -> tuple[str, float]:
    """Run the training script as a subprocess and SIGKILL it as soon as `checkpoint` is on disk (a checkpoint gets
    its name once it is complete); its stderr (the log) and wall time. RuntimeError when it ends by itself."""
    command, environment = training_command(context, arguments)
    started = time.perf_counter()
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a full pipe that nobody reads would stall the run
        process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=log, cwd=REPO)
        try:
            while process.poll() is None and not checkpoint.is_dir():
                time.sleep(KILL_POLL_SECONDS)
        finally:  # also when the part runs out of time
            process.kill()
            process.wait()
        log.seek(0)
        stderr = log.read().decode(errors="replace")
    if process.returncode != -signal.SIGKILL:
        raise RuntimeError(f"train.py exited with {process.returncode} before it was killed: {stderr[-2000:]}")
    return stderr, time.perf_counter() - started


def checkpoint_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The raw and the EMA weights of a training checkpoint."""
    weights = {f"model.{name}": value for name, value in load_file(checkpoint / "model.safetensors").items()}
    return weights | {f"ema.{name}": value for name, value in load_file(checkpoint / EMA_WEIGHTS_FILE).items()}


def weight_differences(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Whether two sets of tensors are bitwise equal, and their largest absolute difference."""
    if first.keys() != second.keys():
        raise ValueError(f"different tensors: {sorted(first.keys() ^ second.keys())[:5]}")
    largest = max((first[name].double() - second[name].double()).abs().max().item() for name in first)
    return {
        "bitwise_equal": all(torch.equal(first[name], second[name]) for name in first),
        "max_abs_diff": largest,
        "tensors_compared": len(first),
    }


def check_checkpoint_resume(context: Context, results: dict[str, Any]) -> str:
    sizes = context.sizes
    steps, half = sizes.resume_steps, sizes.resume_steps // 2
    results.update(
        model_config=sizes.model_config, mixed_precision="bf16", deterministic=True, steps=steps, killed_after=half
    )
    with tempfile.TemporaryDirectory(prefix="gpu_check_resume_") as work:
        straight, interrupted = Path(work) / "straight", Path(work) / "interrupted"
        config_file = Path(work) / "unet.json"
        write_json(config_file, sizes.unet_config)
        logs: dict[str, str] = {}
        seconds: dict[str, float] = {}
        logs["uninterrupted"], seconds["uninterrupted"] = run_training(
            context, training_arguments(sizes, straight, config_file)
        )
        logs["killed"], seconds["killed"] = run_training_until(
            context, training_arguments(sizes, interrupted, config_file), interrupted / f"checkpoint-{half}"
        )
        latest = latest_checkpoint(interrupted)
        if latest != interrupted / f"checkpoint-{half}":
            expected = f"checkpoint-{half}"
            raise RuntimeError(f"the run was killed too late: its latest checkpoint is {latest}, not {expected}.")
        resume = ["--resume_from_checkpoint", "latest"]
        logs["resumed"], seconds["resumed"] = run_training(
            context, training_arguments(sizes, interrupted, config_file) + resume
        )
        if f"at step {half}." not in logs["resumed"]:
            raise RuntimeError(f"the second run did not resume at step {half}: {logs['resumed'][-2000:]}")
        final = f"checkpoint-{steps}"
        results |= weight_differences(checkpoint_weights(straight / final), checkpoint_weights(interrupted / final))
    messages = {message[:WARNING_CHARACTERS] for log in logs.values() for message in DETERMINISM_WARNING.findall(log)}
    results["determinism_warnings"] = sorted(messages)
    results["run_seconds"] = seconds
    return OK


# --------------------------------------------------------------------------------------------- (c) sampling


def sample(
    pipeline: DiffusionPipeline, generator: torch.Generator, batch_size: int, steps: int, output_type: str
) -> Any:
    pipeline.set_progress_bar_config(disable=True)
    return pipeline(batch_size=batch_size, generator=generator, num_inference_steps=steps, output_type=output_type)[0]


def sample_seeded(
    pipeline_class: type[DiffusionPipeline],
    unet: UNet2DModel,
    generator_device: torch.device | str,
    sizes: Sizes,
    output_type: str,
) -> Any:
    """Images of a new `pipeline_class` with `unet`, a DDPM scheduler and a seeded generator on the given device."""
    pipeline = pipeline_class(unet=unet, scheduler=DDPMScheduler())
    generator = seeded_generator(generator_device)
    return sample(pipeline, generator, sizes.sample_batch_size, sizes.sample_steps, output_type)


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def one_step_outcome(
    pipeline_class: type[DiffusionPipeline], unet: UNet2DModel, generator: Any, output_type: str
) -> str:
    """'ok', or the error of sampling one image in one step."""
    try:
        sample(pipeline_class(unet=unet, scheduler=DDPMScheduler()), generator, 1, 1, output_type)
    except (TypeError, ValueError, RuntimeError) as error:
        return describe(error)
    return OK


def generator_mismatch_errors(unet: UNet2DModel, generator: Any) -> dict[str, str]:
    """What DDPMPlusPipeline and DDPMPipeline do with a generator on another device than `unet`."""
    return {
        pipeline_class.__name__: one_step_outcome(pipeline_class, unet, generator, "np")
        for pipeline_class in (DDPMPlusPipeline, DDPMPipeline)
    }


def check_sampling(context: Context, results: dict[str, Any]) -> str:
    sizes, device = context.sizes, context.device
    batch, steps = sizes.sample_batch_size, sizes.sample_steps
    results.update(model_config=sizes.model_config, batch_size=batch, num_inference_steps=steps)
    unet = new_unet(sizes.unet_config, device)
    for generator_device in ("cpu", "cuda") if context.on_cuda else ("cpu",):
        ours, seconds = timed(
            functools.partial(sample_seeded, DDPMPlusPipeline, unet, generator_device, sizes, "np"), device
        )
        theirs = sample_seeded(DDPMPipeline, unet, generator_device, sizes, "np")
        results[f"fp32, {generator_device} generator"] = {
            "bitwise_equal_to_DDPMPipeline": bool(np.array_equal(ours, theirs)),
            "images_per_s": batch / seconds,
        }
    for dtype in (torch.float16, torch.bfloat16):
        half = new_unet(sizes.unet_config, device, dtype)
        images, seconds = timed(functools.partial(sample_seeded, DDPMPlusPipeline, half, device, sizes, "pt"), device)
        results[str(dtype).removeprefix("torch.")] = {
            "finite": bool(torch.isfinite(images).all()),
            "images_per_s": batch / seconds,
            "output_type_pil": one_step_outcome(DDPMPlusPipeline, half, seeded_generator(device), "pil"),
        }
    if context.on_cuda:
        errors = generator_mismatch_errors(new_unet(sizes.unet_config, "cpu"), seeded_generator(device))
        results["cuda generator, cpu pipeline"] = errors | {"same_as_diffusers": len(set(errors.values())) == 1}
    return OK


# --------------------------------------------------------------------------------------------- (d) likelihood


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 matmuls and convolutions on CUDA on or off, restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def exact_bound(unet: UNet2DModel, images: torch.Tensor, timesteps: int, max_batch_size: int) -> BoundResult:
    """The exact bound over a linear-beta chain of `timesteps` steps, with the same noise on every call."""
    scheduler = DDPMPlusScheduler(num_train_timesteps=timesteps)
    return variational_bound(
        unet, images, scheduler, generator=seeded_generator("cpu"), max_batch_size=max_batch_size, progress=False
    )


def check_likelihood(context: Context, results: dict[str, Any]) -> str:
    sizes, device = context.sizes, context.device
    unet = new_unet(sizes.unet_config, device)
    images = held_out_digits(sizes.unet_config, max(sizes.check_images, sizes.speed_images))
    checked, chunk = images[: sizes.check_images], sizes.likelihood_batch_size
    reference = exact_bound(new_unet(sizes.unet_config, "cpu", torch.float64), checked, sizes.check_timesteps, chunk)
    results["check"] = {
        "images": len(checked),
        "timesteps": sizes.check_timesteps,
        "cpu_float64_bpd": reference.total_bpd.tolist(),
    }
    results["speed"] = {"images": sizes.speed_images, "timesteps": sizes.speed_timesteps, "max_batch_size": chunk}
    speed_images = images[: sizes.speed_images]
    for precision, allow_tf32 in (("fp32", False), ("tf32", True)) if context.on_cuda else (("fp32", False),):
        with tf32(allow_tf32):
            value = exact_bound(unet, checked, sizes.check_timesteps, chunk).total_bpd
            difference = (value - reference.total_bpd).abs().max().item()
            results["check"][precision] = {
                "bpd": value.tolist(),
                "max_abs_diff": difference,
                f"within_{BPD_TOLERANCE:g}": difference <= BPD_TOLERANCE,
            }
            exact_bound(unet, speed_images[:1], min(chunk, sizes.speed_timesteps), chunk)  # warm-up: a full chunk
            bound, seconds = timed(lambda: exact_bound(unet, speed_images, sizes.speed_timesteps, chunk), device)
            results["speed"][precision] = {"seconds": seconds, "evaluations_per_s": bound.num_evaluations / seconds}
    return OK


# --------------------------------------------------------------------------------------------- (e) posterior


def inpaint(unet: UNet2DModel, truth: torch.Tensor, mask: torch.Tensor, steps: int) -> torch.Tensor:
    """Posterior samples of `truth` with the pixels where `mask` is 0 missing, in [0, 1]."""
    pipeline = DDPMPlusPosteriorPipeline(unet, DDPMPlusScheduler())
    pipeline.set_progress_bar_config(disable=True)
    generator = seeded_generator(unet.device)
    output = pipeline(
        truth * mask, "inpainting", mask=mask, num_inference_steps=steps, generator=generator, output_type="pt"
    )
    return output.images


def check_posterior(context: Context, results: dict[str, Any]) -> str:
    sizes, device = context.sizes, context.device
    truth = held_out_digits(sizes.unet_config, sizes.sample_batch_size)
    mask = torch.ones_like(truth)
    mask[..., truth.shape[-1] // 2 :] = 0  # the right half is missing
    results.update(operator="inpainting", batch_size=len(truth), num_inference_steps=sizes.posterior_steps)
    for dtype in (torch.float32, torch.bfloat16):
        unet = new_unet(sizes.unet_config, device, dtype)
        images, seconds = timed(functools.partial(inpaint, unet, truth, mask, sizes.posterior_steps), device)
        results[str(dtype).removeprefix("torch.")] = {
            "finite": bool(torch.isfinite(images).all()),
            "images_per_s": len(truth) / seconds,
        }
    return OK


# --------------------------------------------------------------------------------------------- (f) sharded runs


def run_command(arguments: list[str], device: torch.device) -> float:
    """Run `ddpm-plus *arguments` in this process (one process: no launcher); its wall time in seconds."""
    status, seconds = timed(lambda: ddpm_plus_command(arguments), device)
    if status != 0:
        raise RuntimeError(f"ddpm-plus {' '.join(arguments)} exited with {status}")
    return seconds


def check_evaluation_commands(context: Context, results: dict[str, Any]) -> str:
    sizes, device = context.sizes, context.device
    count, steps = sizes.command_images, sizes.command_steps
    results.update(model_config=sizes.model_config, num_images=count, steps=steps)
    with tempfile.TemporaryDirectory() as directory:
        model = Path(directory) / "model"
        scheduler = DDPMPlusScheduler(num_train_timesteps=sizes.command_timesteps)
        DDPMPlusPipeline(new_unet(sizes.unet_config, "cpu"), scheduler).save_pretrained(model)
        common = ["--model", str(model), "--device", str(device)]
        for dtype in ("float32", "bfloat16") if context.on_cuda else ("float32",):
            out = Path(directory) / f"{dtype}.png"
            sample = ["sample", *common, "--num-images", str(count), "--steps", str(steps), "--dtype", dtype]
            sample += ["--batch-size", str(count), "--out", str(out)]
            seconds = run_command(sample, device)
            rerun_seconds = run_command(sample, device)  # every image complete: nothing to make
            (archive,) = (Path(directory) / dtype).glob("samples_*.npz")
            with np.load(archive) as arrays:
                shape = list(arrays["arr_0"].shape)
            results[f"sample {dtype}"] = {
                "images_per_s": count / seconds,
                "archive_shape": shape,
                "rerun_seconds": rerun_seconds,
            }
        output = Path(directory) / "bpd.json"
        bpd = ["bpd", *common, "--data", "digits", "--split", "test", "--max-images", "2", "--num-timesteps", "full"]
        seconds = run_command([*bpd, "--batch-size", str(sizes.likelihood_batch_size), "--output", str(output)], device)
        summary = json.loads(output.read_text())["summary"]
        results["bpd exact"] = {
            "mean_bpd": summary["mean_bpd"],
            "finite": bool(np.isfinite(summary["mean_bpd"])),
            "evaluations_per_s": summary["num_evaluations"] / seconds,
        }
    results["several_gpus"] = (
        "not checked: one device here; sharding is tested on 2 CPU processes (tests/test_sampling_at_scale.py, "
        "tests/test_bpd_at_scale.py, tests/test_fid.py)"
    )
    return OK


# --------------------------------------------------------------------------------------------- running the parts


@dataclass(frozen=True)
class Part:
    title: str
    check: Callable[[Context, dict[str, Any]], str]  # fills the results in place; returns the status


PARTS: dict[str, Part] = {
    "a": Part("training throughput in bf16: ours vs diffusers' recipe, and ours compiled", check_training_throughput),
    "b": Part("train.py in bf16: checkpoint, SIGKILL and resume vs an uninterrupted run", check_checkpoint_resume),
    "c": Part("sampling: DDPMPlusPipeline vs DDPMPipeline; fp16 and bf16 UNets", check_sampling),
    "d": Part("likelihood: fp32 vs CPU float64; evaluations/s of the exact bound", check_likelihood),
    "e": Part("DDPMPlusPosteriorPipeline in fp32 and bf16", check_posterior),
    "f": Part("ddpm-plus sample (float32, bfloat16) and bpd on the device", check_evaluation_commands),
}


class PartTimeout(BaseException):
    """Raised in a part that overruns its budget (a BaseException, so that no `except Exception` swallows it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise PartTimeout in the main thread after `seconds` (subprocess.run kills its child on the way out)."""

    def expire(signum: int, frame: Any) -> None:
        raise PartTimeout(f"the part exceeded its time budget of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_part(key: str, context: Context) -> dict[str, Any]:
    """Run one part under its budget; a failure is recorded with the results gathered until then."""
    budget = context.sizes.budgets_s[key]
    record: dict[str, Any] = {"title": PARTS[key].title, "budget_s": budget, "results": {}}
    started = time.perf_counter()
    try:
        with time_limit(budget):
            record["status"] = PARTS[key].check(context, record["results"])
    except (Exception, PartTimeout) as error:
        record["status"] = FAILED
        record["error"] = describe(error)
    finally:
        release_memory(context.device)
    record["seconds"] = time.perf_counter() - started
    return record


def environment(context: Context) -> dict[str, Any]:
    gpu = None
    if context.on_cuda:
        properties = torch.cuda.get_device_properties(context.device)
        gpu = {
            "name": properties.name,
            "memory_gib": gib(properties.total_memory),
            "capability": f"{properties.major}.{properties.minor}",
            "cudnn": torch.backends.cudnn.version(),
        }
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dry_run": context.dry_run,
        "device": str(context.device),
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "accelerate": accelerate.__version__,
        "ddpm_plus": ddpm_plus.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
    }


def flatten(results: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, value in results.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    return str(value)


def text_report(report: dict[str, Any]) -> str:
    env = report["environment"]
    where = env["gpu"]["name"] if env["gpu"] else env["device"]
    mode = " -- DRY RUN: toy sizes, not GPU results" if env["dry_run"] else ""
    lines = [
        f"ddpm_plus GPU check, {env['date']}, {where}{mode}",
        f"torch {env['torch']} (CUDA {env['cuda']}), diffusers {env['diffusers']}, accelerate {env['accelerate']}, "
        f"ddpm_plus {env['ddpm_plus']}; {report['seconds']:.0f} s in all",
    ]
    for key, record in report["parts"].items():
        line = f"({key}) {record['title']}: {record['status']}"
        if record["status"] != SKIPPED:
            line += f" ({record['seconds']:.1f} s of {record['budget_s']:g} s)"
        lines.append(line)
        if "error" in record:
            lines.append(f"    error: {record['error']}")
        lines += [f"    {name}: {format_value(value)}" for name, value in flatten(record.get("results", {}))]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- command line


def parse_parts(text: str) -> list[str]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in parts if part not in PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"choose among {','.join(PARTS)}, got {text!r}")
    return parts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="Every part at toy size (on the CPU by default).")
    parser.add_argument(
        "--device", choices=("cuda", "cpu"), default=None, help="Default: cpu with --dry-run, else cuda."
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="Report directory (default: bench/results/gpu or gpu-dry-run)."
    )
    parser.add_argument("--parts", type=parse_parts, default=list(PARTS), help="Comma-separated, e.g. a,c,d.")
    return parser


def resolve_device(parser: argparse.ArgumentParser, args: argparse.Namespace) -> torch.device:
    """The device to check; exits with code 2 and one line when a full run has no CUDA device."""
    device = torch.device(args.device or ("cpu" if args.dry_run else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.exit(2, f"gpu_check: no CUDA device (torch.cuda.is_available() is False); {CPU_HINT}\n")
    if device.type == "cpu" and not args.dry_run:
        parser.exit(2, f"gpu_check: the full check runs on a CUDA device only; {CPU_HINT}\n")
    return device


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    device = resolve_device(parser, args)
    context = Context(device=device, sizes=DRY_RUN_SIZES if args.dry_run else GPU_SIZES, dry_run=args.dry_run)
    out = args.out or DEFAULT_OUT / ("gpu-dry-run" if args.dry_run else "gpu")
    started = time.perf_counter()
    report: dict[str, Any] = {"environment": environment(context), "parts": {}}
    for key, part in PARTS.items():
        if key not in args.parts:
            report["parts"][key] = {"title": part.title, "status": SKIPPED}
            continue
        record = report["parts"][key] = run_part(key, context)
        print(f"({key}) {record['status']} in {record['seconds']:.1f} s", flush=True)  # progress, before the report
    report["seconds"] = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "gpu_check.json", report)
    text = text_report(report)
    (out / "gpu_check.txt").write_text(text)
    print(text, end="")
    return 1 if any(record["status"] == FAILED for record in report["parts"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
