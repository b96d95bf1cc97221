#!/usr/bin/env python
"""Sampling throughput (images/s): `DDPMPlusPipeline` against diffusers' `DDPMPipeline` in the same run, and
`ddpm-plus sample` on one process against two (`accelerate launch`), with the scaling efficiency; on a GPU also
float16 and bfloat16.

The pipelines share one randomly initialised UNet (`--model_config`), scheduler configuration, batch and per-image
generators; they alternate in rounds so that load changes on a shared machine hit both alike. The command-line part
saves that pipeline and runs `ddpm-plus sample` as one process on one thread, one process on all threads
(`--threads`, default all cores) and two processes (`accelerate launch --multi_gpu --num_processes 2`, two GPUs for
`--device cuda`) on half the threads each, and counts only the generation: the time of the run minus the time of a
rerun over the finished folder (start-up, model loading, checking the images, writing the archive).

    python bench/sample_throughput.py                                   # CPU, digits-16, 50 steps
    python bench/sample_throughput.py --device cuda --model_config ddpm-cifar10 --batch_size 256 --steps 1000
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from ddpm_plus import DDPMPlusPipeline
from ddpm_plus.models import unet_config
from ddpm_plus.training.launch import available_cpu_cores


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--model_config", default="digits-16")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50, help="denoising steps per image (T = 1000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cli_images", type=int, default=64, help="images of each `ddpm-plus sample` run")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads in all (default: all cores)")
    return parser.parse_args()


def build_pipelines(args: argparse.Namespace) -> tuple[DDPMPlusPipeline, DDPMPipeline]:
    torch.manual_seed(0)
    unet = UNet2DModel.from_config(unet_config(args.model_config)).to(args.device).eval()
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    ours, theirs = DDPMPlusPipeline(unet, scheduler), DDPMPipeline(unet, DDPMScheduler.from_config(scheduler.config))
    for pipeline in (ours, theirs):
        pipeline.set_progress_bar_config(disable=True)
    return ours, theirs


def images_per_second(pipeline: DDPMPipeline, args: argparse.Namespace, dtype: torch.dtype = torch.float32) -> float:
    generators = [torch.Generator().manual_seed(index) for index in range(args.batch_size)]
    if pipeline.unet.dtype != dtype:
        pipeline.to(dtype=dtype)
    if args.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    pipeline(batch_size=args.batch_size, generator=generators, num_inference_steps=args.steps, output_type="np")
    if args.device == "cuda":
        torch.cuda.synchronize()
    return args.batch_size / (time.perf_counter() - start)


def compare_pipelines(args: argparse.Namespace) -> None:
    ours, theirs = build_pipelines(args)
    images_per_second(ours, args)  # warm-up
    rates: dict[str, list[float]] = {"DDPMPlusPipeline": [], "DDPMPipeline": []}
    for _ in range(args.rounds):
        rates["DDPMPlusPipeline"].append(images_per_second(ours, args))
        rates["DDPMPipeline"].append(images_per_second(theirs, args))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, rate in medians.items():
        print(f"{name:>18}: {rate:8.2f} images/s (median of {args.rounds}, float32)")
    print(f"{'ratio':>18}: {medians['DDPMPlusPipeline'] / medians['DDPMPipeline']:.3f}")
    if args.device == "cuda":
        for dtype in (torch.float16, torch.bfloat16):
            images_per_second(ours, args, dtype)
            rate = statistics.median(images_per_second(ours, args, dtype) for _ in range(args.rounds))
            print(f"{'DDPMPlusPipeline':>18}: {rate:8.2f} images/s ({str(dtype).removeprefix('torch.')})")


def timed_sample_command(model: Path, out: Path, processes: int, threads: int, args: argparse.Namespace) -> float:
    """Seconds of `ddpm-plus sample` generating `--cli_images` images (the run minus a rerun over its output)."""
    command = ["-m", "ddpm_plus.cli", "sample", "--model", str(model), "--num-images", str(args.cli_images)]
    command += ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--out", str(out)]
    command += ["--device", args.device]
    if processes > 1:
        command = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes), *command]
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if args.device == "cpu":
        environment["CUDA_VISIBLE_DEVICES"] = ""
    seconds = []
    for _ in range(2):  # the run, then the rerun that finds every image complete
        start = time.perf_counter()
        subprocess.run([sys.executable, *command], env=environment, check=True, capture_output=True)
        seconds.append(time.perf_counter() - start)
    return seconds[0] - seconds[1]


def compare_process_counts(args: argparse.Namespace) -> None:
    """One process on one thread, one process on all threads, and two processes on half the threads each: the
    scaling efficiency of two processes is their rate over twice the rate of one process on one thread."""
    threads = args.threads or available_cpu_cores()
    runs = [(1, 1), (1, threads), (2, max(1, threads // 2))] if args.device == "cpu" else [(1, 1), (2, 1)]
    with tempfile.TemporaryDirectory() as scratch:
        model = Path(scratch) / "model"
        build_pipelines(args)[0].save_pretrained(model)
        rates = {}
        for processes, per_process in runs:
            out = Path(scratch) / f"run-{processes}-{per_process}" / "samples.png"
            rates[processes, per_process] = args.cli_images / timed_sample_command(
                model, out, processes, per_process, args
            )
            print(
                f"ddpm-plus sample, {processes} process(es) x {per_process} thread(s): "
                f"{rates[processes, per_process]:8.2f} images/s ({args.cli_images} images, generation only)"
            )
    two = rates[runs[-1]]
    print(f"scaling efficiency of 2 processes (against 1 process x 1 thread): {two / (2 * rates[1, 1]):.2f}")


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(
        f"{args.model_config}, {args.steps} steps, batch {args.batch_size}, {args.device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    compare_pipelines(args)
    compare_process_counts(args)


if __name__ == "__main__":
    main()
