"""Benchmark: posterior sampling (inpainting, x2 super-resolution) on held-out digits with a trained DDPM.

    python bench/posterior.py --model runs/digits [--num-images 64] [--steps 1000] [--noise-level 0.05]

`--model` is a pipeline directory written by `train_scripts/train.py` (README command 1 writes `runs/digits`).
For each task it reports the PSNR (on the [0, 1] scale, higher is better) against the ground truth of
- the measurement-only baseline (inpainting: missing pixels set to the mean grey of the observed ones;
  super-resolution: bicubic upsampling of the low-resolution image),
- DPS-style guidance (Var[x_0 | x_t] = 0, only λ² in the likelihood),
- the time-averaged likelihood with the Gaussian Var[x_0 | x_t] (data variance measured on the training split).
"""

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from ddpm_plus import DDPMPlusPosteriorPipeline
from ddpm_plus.data import load_image_dataset
from ddpm_plus.pipeline_ddpm_plus import image_size
from ddpm_plus.pipeline_ddpm_plus_posterior import InpaintingOperator, LinearOperator, SuperResolutionOperator


def psnr(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean PSNR in dB of images in [-1, 1], measured on the [0, 1] scale."""
    mse = (((estimate.clamp(-1, 1) - truth) / 2) ** 2).flatten(1).mean(1)
    return float((10 * torch.log10(1 / mse)).mean())


def stack(dataset, count: int) -> torch.Tensor:
    return torch.stack([dataset[i] for i in range(min(count, len(dataset)))])


def measurement_only(task: str, y: torch.Tensor, mask: torch.Tensor, size: int) -> torch.Tensor:
    if task == "inpainting":
        observed_mean = (y * mask).flatten(1).sum(1) / mask.flatten(1).sum(1)
        return y * mask + (1 - mask) * observed_mean.view(-1, 1, 1, 1)
    return F.interpolate(y, size=(size, size), mode="bicubic", align_corners=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/digits", help="pipeline directory (train_scripts/train.py output)")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--noise-level", type=float, default=0.05)
    parser.add_argument("--dps-scale", type=float, default=1.0, help="guidance scale of the DPS-style baseline")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    pipe = DDPMPlusPosteriorPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    size, width = image_size(pipe.unet.config.sample_size)
    if size != width:
        raise ValueError(f"the digits are square; the model takes {size}x{width} images.")
    train = stack(load_image_dataset("digits", resolution=size, split="train"), 2000)
    truth = stack(load_image_dataset("digits", resolution=size, split="test"), args.num_images)
    data_variance = float(train.var())
    mask = torch.ones_like(truth)
    mask[..., :, size // 2 :] = 0  # the right half is missing
    operators: dict[str, LinearOperator] = {
        "inpainting": InpaintingOperator(mask[:1]),
        "super_resolution x2": SuperResolutionOperator(2),
    }
    generator = torch.Generator().manual_seed(args.seed)
    print(
        f"model {args.model}, {len(truth)} held-out digits, {args.steps} steps, λ = {args.noise_level}, "
        f"data variance {data_variance:.3f}"
    )
    for task, operator in operators.items():
        clean = operator(truth)
        y = clean + args.noise_level * torch.randn(clean.shape, generator=generator)
        results = {"measurement only": psnr(measurement_only(task.split()[0], y, mask, size), truth)}
        for name, approximation, scale in [
            ("DPS-style (λ² only)", "dps", args.dps_scale),
            ("averaged likelihood (Gaussian Var)", "gaussian", 1.0),
        ]:
            start = time.perf_counter()
            images = pipe(
                y,
                operator,
                args.noise_level,
                variance_approximation=approximation,
                data_variance=data_variance,
                guidance_scale=scale,
                num_inference_steps=args.steps,
                output_type="pt",
                generator=torch.Generator().manual_seed(args.seed),
            ).images
            results[name] = psnr(images * 2 - 1, truth)
            results[name + " seconds"] = time.perf_counter() - start
        print(f"\n{task}:")
        for name, value in results.items():
            unit = "s" if name.endswith("seconds") else "dB"
            print(f"  {name:40s} {value:8.2f} {unit}")
    print(f"\nPSNR on the [0, 1] scale; numpy {np.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
