"""`ddpm-plus sample`: generate images with a saved DDPM pipeline and write a PNG grid plus the single images.

    ddpm-plus sample --model DIR --num-images 16 --steps 1000 --seed 0 --out samples.png

writes `samples.png` (the grid) and `samples/000000.png`, `samples/000001.png`, ... Image i is generated from its own
generator seeded with `seed + i`, so its noise does not depend on `--batch-size`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from ddpm_plus.pipeline_ddpm_plus import DDPMPlusPipeline


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `sample` sub-command to the `ddpm-plus` parser."""
    parser = subparsers.add_parser(
        "sample",
        help="generate images with a saved pipeline (PNG grid + single images)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="saved pipeline directory (or Hub id)")
    parser.add_argument("--num-images", type=_positive_int, default=16, help="number of images (default 16)")
    parser.add_argument("--steps", type=_positive_int, default=None, help="denoising steps (default: all T steps)")
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--batch-size", type=_positive_int, default=16, help="images per network call (default 16)")
    parser.add_argument("--nrow", type=_positive_int, default=None, help="images per grid row (default: square)")
    parser.add_argument("--out", type=_png_path, required=True, help="grid PNG; single images go to a folder beside it")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate the images, write the grid and the single images, and print where they are."""
    from ddpm_plus.data import make_grid
    from ddpm_plus.pipeline_ddpm_plus import DDPMPlusPipeline

    pipeline = DDPMPlusPipeline.from_pretrained(args.model).to(args.device)
    pipeline.set_progress_bar_config(leave=False)
    steps = args.steps or pipeline.scheduler.config.num_train_timesteps
    images = generate_images(pipeline, args.num_images, steps, args.seed, args.batch_size)

    image_directory = args.out.with_suffix("")
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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _png_path(text: str) -> Path:
    path = Path(text)
    if path.suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"must be a .png file, got {text}")
    return path
