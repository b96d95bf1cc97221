"""`ddpm-plus sample`: generate images with a saved DDPM pipeline and write a PNG grid plus the single images.

The arguments, their checks (output locations included) and the usage text are in `ddpm_plus.cli`, which imports
this module (torch, diffusers) only to run the command.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import torch
from PIL import Image
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from ddpm_plus.pipeline_ddpm_plus import DDPMPlusPipeline


def run(args: argparse.Namespace) -> int:
    """Generate the images, write the grid and the single images, and print where they are."""
    from ddpm_plus.cli import sample_image_directory
    from ddpm_plus.data import make_grid
    from ddpm_plus.pipeline_ddpm_plus import DDPMPlusPipeline

    pipeline = DDPMPlusPipeline.from_pretrained(args.model).to(args.device)
    pipeline.set_progress_bar_config(leave=False)
    steps = args.steps or pipeline.scheduler.config.num_train_timesteps
    images = generate_images(pipeline, args.num_images, steps, args.seed, args.batch_size)

    image_directory = sample_image_directory(args.out)
    image_directory.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        image.save(image_directory / f"{index:06d}.png")
    nrow = args.nrow or max(1, round(len(images) ** 0.5))
    make_grid(images, nrow=nrow).save(args.out)
    print(f"Wrote {args.out} and {len(images)} images in {image_directory}/")
    return 0


def generate_images(
    pipeline: DDPMPlusPipeline, num_images: int, num_inference_steps: int, seed: int, batch_size: int
) -> list[Image.Image]:
    """`num_images` PIL images; image i is drawn with a CPU generator seeded with `seed + i`."""
    images: list[Image.Image] = []
    with tqdm(total=num_images, desc="images", unit="img") as progress:
        for start in range(0, num_images, batch_size):
            seeds = range(seed + start, seed + min(start + batch_size, num_images))
            generators = [torch.Generator().manual_seed(s) for s in seeds]
            batch = pipeline(
                batch_size=len(generators),
                generator=generators,
                num_inference_steps=num_inference_steps,
                output_type="pil",
            ).images
            images.extend(batch)
            progress.update(len(batch))
    return images
