"""Benchmark: DDPMPlusScheduler.step / add_noise against diffusers' DDPMScheduler, measured in the same run.

    python bench/scheduler_step.py [--batch 64] [--size 32] [--repeats 200]

Prints the median time per call of each and the ratio ours / diffusers (goal ≤ 1.0×).
"""

import argparse
import statistics
import time

import torch
from diffusers import DDPMScheduler

from ddpm_plus import DDPMPlusScheduler


def median_seconds(fn, repeats: int) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(scheduler_class, args) -> dict[str, float]:
    scheduler = scheduler_class()
    scheduler.set_timesteps(args.steps)
    shape = (args.batch, 3, args.size, args.size)
    sample, model_output = torch.randn(shape), torch.randn(shape)
    generator = torch.Generator().manual_seed(0)
    t = scheduler.timesteps[args.steps // 2]
    timesteps = torch.randint(0, 1000, (args.batch,), generator=generator)
    return {
        "step": median_seconds(lambda: scheduler.step(model_output, t, sample, generator=generator), args.repeats),
        "add_noise": median_seconds(lambda: scheduler.add_noise(sample, model_output, timesteps), args.repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    # interleave the two measurements to share the machine's state fairly
    theirs, ours = measure(DDPMScheduler, args), measure(DDPMPlusScheduler, args)
    theirs2, ours2 = measure(DDPMScheduler, args), measure(DDPMPlusScheduler, args)
    print(f"shape {args.batch}x3x{args.size}x{args.size}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in ("step", "add_noise"):
        t_theirs = min(theirs[name], theirs2[name])
        t_ours = min(ours[name], ours2[name])
        ratio = t_ours / t_theirs
        print(f"{name:10s} diffusers {t_theirs * 1e6:8.1f} us   ddpm_plus {t_ours * 1e6:8.1f} us   ratio {ratio:.3f}x")


if __name__ == "__main__":
    main()
