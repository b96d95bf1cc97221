#!/usr/bin/env python
"""Training throughput (images/s) of our training step against diffusers' own recipe, measured in the same run.

"ours" is the step that `train_scripts/train.py` runs (`ddpm_plus.training.TrainingStep`): timesteps from the
uniform sampler, x_t from `DDPMPlusScheduler.q_sample`, the ε-MSE of `training_losses`, AdamW, clipping, LR
schedule and EMA. "diffusers" is the loop of diffusers' `examples/unconditional_image_generation/
train_unconditional.py`: `DDPMScheduler.add_noise`, `F.mse_loss`, `torch.optim.AdamW` with its default
implementation, clipping, LR schedule, `EMAModel` (no foreach) and a `loss.item()` for the log every step.

Both do the same learning work: the same UNet config, batch, precision, optimizer hyper-parameters, clipping, LR
schedule and EMA. What differs is how: ours uses channels_last, foreach (CPU) or fused (CUDA) AdamW, a foreach EMA
update and no host synchronisation per step. Torch threads are the same for both (`--num_threads`, default all
cores); `accelerate launch` would run the recipe with OMP_NUM_THREADS=1, which `--launch_threads_baseline` measures
as an extra line. The two loops alternate in rounds so that load changes on a shared machine hit both alike.

    python bench/train_throughput.py --launch_threads_baseline   # CPU, digits-16, batch 64
    python bench/train_throughput.py --compile                   # adds ours with torch.compile
    python bench/train_throughput.py --device cuda --model_config ddpm-cifar10 --mixed_precision bf16 --batch_size 128
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from ddpm_plus.models import unet_config
from ddpm_plus.scheduling_ddpm_plus import DDPMPlusScheduler
from ddpm_plus.timestep_samplers import UniformSampler
from ddpm_plus.training import (
    DiffusionObjective,
    TrainingGenerators,
    TrainingStep,
    build_optimizer,
    torch_threads_per_process,
)

LEARNING_RATE = 1e-4
EMA = {"decay": 0.9999, "use_ema_warmup": True, "inv_gamma": 1.0, "power": 0.75}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--model_config", default="digits-16")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--mixed_precision", default="no", choices=("no", "fp16", "bf16"))
    parser.add_argument("--num_train_timesteps", type=int, default=1000)
    parser.add_argument("--steps_per_round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup_steps", type=int, default=3)
    parser.add_argument("--num_threads", type=int, default=None, help="Torch threads for both loops.")
    parser.add_argument("--compile", action="store_true", help="Also time ours with torch.compile (--compile).")
    parser.add_argument(
        "--launch_threads_baseline",
        action="store_true",
        help="Also time the diffusers recipe with one torch thread, as `accelerate launch` runs it by default.",
    )
    return parser.parse_args()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_8bit_batches(config: dict, batch_size: int, count: int, device: torch.device) -> list[torch.Tensor]:
    """Images on the 8-bit grid in [-1, 1] (the likelihood code needs 8-bit data; the loss here does not)."""
    generator = torch.Generator().manual_seed(0)
    shape = (batch_size, config["in_channels"], config["sample_size"], config["sample_size"])
    return [(torch.randint(0, 256, shape, generator=generator) / 127.5 - 1).to(device) for _ in range(count)]


def build_ours(
    accelerator: Accelerator, config: dict, num_steps: int, compile_backend: str | None = None
) -> Callable[[torch.Tensor], None]:
    """The training script's step (channels_last, as its defaults), with the model compiled by `torch.compile`
    with `compile_backend` unless it is None ("inductor" is torch.compile's default)."""
    torch.manual_seed(0)
    unet = UNet2DModel.from_config(config).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(list(unet.parameters()), learning_rate=LEARNING_RATE, device=accelerator.device)
    lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=10, num_training_steps=10_000)
    model, optimizer = accelerator.prepare(unet, optimizer)
    if compile_backend is not None:
        model = torch.compile(model, backend=compile_backend)
    objective = DiffusionObjective(
        DDPMPlusScheduler(num_train_timesteps=num_steps), UniformSampler(num_steps), channels_last=True
    )
    step = TrainingStep(
        accelerator,
        model,
        optimizer,
        lr_scheduler,
        objective,
        TrainingGenerators.create(0, 0, accelerator.device),
        ema=EMAModel(unet.parameters(), foreach=True, **EMA),
        max_grad_norm=1.0,
    )
    return lambda batch: step([batch])


def build_diffusers_recipe(accelerator: Accelerator, config: dict, num_steps: int) -> Callable[[torch.Tensor], None]:
    """The training step of diffusers' train_unconditional.py (epsilon prediction), as written there."""
    torch.manual_seed(0)
    model = UNet2DModel.from_config(config)
    noise_scheduler = DDPMScheduler(num_train_timesteps=num_steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.999), weight_decay=0.0, eps=1e-8)
    lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=10, num_training_steps=10_000)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    ema_model = EMAModel(
        accelerator.unwrap_model(model).parameters(), model_cls=UNet2DModel, model_config=config, **EMA
    )
    device = accelerator.device

    def step(clean_images: torch.Tensor) -> None:
        noise = torch.randn(clean_images.shape, dtype=clean_images.dtype).to(device)
        timesteps = torch.randint(0, num_steps, (clean_images.shape[0],), device=device).long()
        noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)
        with accelerator.accumulate(model):
            model_output = model(noisy_images, timesteps).sample
            loss = F.mse_loss(model_output.float(), noise.float())
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        if accelerator.sync_gradients:
            ema_model.step(model.parameters())
        loss.detach().item()  # the recipe logs the loss of every step

    return step


def time_steps(step: Callable[[torch.Tensor], None], batches: list[torch.Tensor], device: torch.device) -> float:
    """Seconds per step over `batches`."""
    synchronize(device)
    started = time.perf_counter()
    for batch in batches:
        step(batch)
    synchronize(device)
    return (time.perf_counter() - started) / len(batches)


def measure(
    loops: dict[str, tuple[Callable[[torch.Tensor], None], int]],
    batches: list[torch.Tensor],
    device: torch.device,
    *,
    warmup_steps: int,
    rounds: int,
) -> dict[str, float]:
    """Median seconds per step of each loop (run with its thread count), alternating loops in rounds."""
    for step, threads in loops.values():
        torch.set_num_threads(threads)
        time_steps(step, batches[:warmup_steps], device)
    per_round: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(rounds):
        for name, (step, threads) in loops.items():
            torch.set_num_threads(threads)
            per_round[name].append(time_steps(step, batches, device))
    return {name: statistics.median(times) for name, times in per_round.items()}


def main() -> None:
    args = parse_args()
    threads = torch_threads_per_process(args.num_threads)
    accelerator = Accelerator(cpu=args.device == "cpu", mixed_precision=args.mixed_precision)
    if accelerator.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    config = unet_config(args.model_config)
    batches = random_8bit_batches(config, args.batch_size, args.steps_per_round, accelerator.device)
    loops = {
        "ours": (build_ours(accelerator, config, args.num_train_timesteps), threads),
        "diffusers": (build_diffusers_recipe(accelerator, config, args.num_train_timesteps), threads),
    }
    if args.launch_threads_baseline:
        loops["diffusers, 1 thread"] = (loops["diffusers"][0], 1)
    if args.compile:
        compiled = build_ours(accelerator, config, args.num_train_timesteps, compile_backend="inductor")
        loops["ours, compiled"] = (compiled, threads)
    seconds = measure(loops, batches, accelerator.device, warmup_steps=args.warmup_steps, rounds=args.rounds)

    parameters = sum(p.numel() for p in UNet2DModel.from_config(config).parameters())
    print(
        f"{args.model_config} ({parameters:,} parameters), batch {args.batch_size}, {args.mixed_precision} precision, "
        f"{accelerator.device}, {threads} torch thread(s), median of {args.rounds} rounds x "
        f"{args.steps_per_round} steps"
    )
    for name, value in seconds.items():
        print(f"  {name:>20}: {args.batch_size / value:8.1f} images/s  ({1000 * value:.1f} ms/step)")
    print(f"  ratio ours / diffusers: {seconds['diffusers'] / seconds['ours']:.2f}x (same threads)")
    if args.launch_threads_baseline:
        ratio = seconds["diffusers, 1 thread"] / seconds["ours"]
        print(f"  ratio ours / diffusers as `accelerate launch` runs it (1 thread): {ratio:.2f}x")
    if args.compile:
        print(
            f"  ratio ours compiled / diffusers: {seconds['diffusers'] / seconds['ours, compiled']:.2f}x (same threads)"
        )


if __name__ == "__main__":
    main()
