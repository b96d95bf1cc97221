"""`ddpm-plus sample`: generate images with a saved DDPM pipeline, sharded over processes and resumable.

The arguments, their checks (output locations included) and the usage text are in `ddpm_plus.cli`, which imports
this module (torch, diffusers) only to run the command. For `--out samples.png` it writes:

    samples.png                       a grid of the first `GRID_IMAGES` images
    samples/000000.png, ...           image i, each written atomically
    samples/samples_NxHxWxC.npz       all images as uint8 (N, H, W, C) under the key `arr_0`
    samples/manifest.json             what made them: model, scheduler configuration, steps, seed, versions

Image i starts from the noise of a CPU generator seeded with `seed + i`. The images are made in chunks of
`--batch-size` consecutive indices, one network batch each, and every chunk is made whole by one process, so each
image meets the same arithmetic for any number of processes: the files are bitwise identical on the same kind of
device with the same number of torch threads per process. A rerun keeps the chunks whose images all decode at the
right size and mode, and makes the others again. A folder of images made with other settings or another
`--num-images` is refused in one line; with `--overwrite`, images of other settings are removed once every check
has passed, and the archive and images of another count once the new archive is written.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ddpm_plus.data import UNREADABLE_IMAGE_ERRORS, make_grid
from ddpm_plus.resources import check_disk, check_memory, first_level_channels, images_bytes, network_batch_bytes
from ddpm_plus.sharding import (
    SEEDING,
    Processes,
    SharedProgress,
    chunks_of,
    default_device,
    launched_processes,
    sample_images,
)
from ddpm_plus.utils import atomic_path, first_difference, read_json_object, write_json

if TYPE_CHECKING:
    from ddpm_plus.pipeline_ddpm_plus import DDPMPlusPipeline

MANIFEST_FILE = "manifest.json"
GRID_IMAGES = 64
ARCHIVE_OVERHEAD = 1024  # the zip's and the .npy's headers
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Settings that decide the pixels: a folder made with other values is not resumed.
IMAGE_SETTINGS = (
    "model",
    "scheduler",
    "steps",
    "stochasticity",
    "class_label",
    "timestep_respacing",
    "seed",
    "dtype",
    "seeding",
)


@dataclass(frozen=True)
class SampleLayout:
    """Where the images of a run go and what each must look like: `count` images of (height, width, channels)."""

    directory: Path
    count: int
    height: int
    width: int
    channels: int

    def image_path(self, index: int) -> Path:
        return self.directory / f"{index:06d}.png"

    @property
    def archive_path(self) -> Path:
        return self.directory / f"samples_{self.count}x{self.height}x{self.width}x{self.channels}.npz"

    @property
    def mode(self) -> str:
        """The PIL mode of the images (diffusers' `numpy_to_pil`): "L" for 1 channel, "RGB" for 3."""
        return "L" if self.channels == 1 else "RGB"

    def holds(self, path: Path) -> bool:
        """Whether `path`, a single image or an archive in the folder, belongs to this run: its archive, or an image
        of an index below its count."""
        return path == self.archive_path or (path.suffix == ".png" and int(path.stem) < self.count)

    def sample_files(self) -> list[Path]:
        """The single images and archives in the folder, of this run or of earlier ones."""
        images = [path for path in self.directory.glob("*.png") if path.stem.isdigit()]
        return images + sorted(self.directory.glob("samples_*x*x*x*.npz"))

    def is_complete(self, index: int) -> bool:
        """Whether image `index` exists, decodes, and has the size and mode of this run's images."""
        try:
            with Image.open(self.image_path(index)) as image:
                image.load()
                return image.size == (self.width, self.height) and image.mode == self.mode
        except UNREADABLE_IMAGE_ERRORS:
            return False


def run(args: argparse.Namespace) -> int:
    """Make the missing images (each process its share of the chunks), then, on the main process, the archive and
    the grid; print where they are."""
    from ddpm_plus.cli import check_sample_precision, sample_image_directory

    directory = sample_image_directory(args.out)
    check_resumable(directory, {**requested_settings(args), "num_images": args.num_images}, args.overwrite)
    args.device = default_device(args.device)
    check_sample_precision(args.dtype, args.device)
    with launched_processes(cpu=args.device == "cpu", num_threads=args.num_threads) as processes:
        pipeline = load_pipeline(args.model, args.dtype, processes.device(args.device), processes.is_main)
        steps = sampling_steps(args, pipeline)
        layout = sample_layout(directory, args.num_images, pipeline)
        evaluations = check_request(layout, args, pipeline, steps)
        if processes.is_main:
            print(evaluations)
        manifest = build_manifest(args, pipeline, steps)
        replace = check_resumable(directory, manifest, args.overwrite)
        processes.wait_for_everyone()  # every process has read the earlier manifest before it is replaced
        if processes.is_main:
            if replace:  # after every check; images of other settings must never count as complete
                remove_earlier_files(layout, keep_current=False)
            write_json(layout.directory / MANIFEST_FILE, manifest)
            remove_unfinished_files(layout.directory)
        processes.wait_for_everyone()
        chunks = processes.concatenate(incomplete_chunks(layout, processes, args.batch_size))
        incomplete = sorted(chunks, key=lambda chunk: chunk.start)
        if not incomplete and processes.is_main:
            print(f"Nothing to sample: the {layout.count} images in {layout.directory}/ are complete.")
        generate_chunks(pipeline, layout, processes, incomplete, args, steps)
        processes.wait_for_everyone()
        if processes.is_main:
            write_outputs(layout, args.out, args.nrow)
            print(f"Wrote {args.out}, {layout.count} images in {layout.directory}/ and {layout.archive_path}")
    return 0


def sampling_steps(args: argparse.Namespace, pipeline: DDPMPlusPipeline) -> int:
    """The number of denoising steps: `--steps`, the timesteps that `--timestep-respacing` keeps, or all T; the
    class label is checked against the model here, before any image is made."""
    from ddpm_plus.pipeline_ddpm_plus import class_label_tensor
    from ddpm_plus.scheduling_ddpm_plus import respaced_timesteps

    class_label_tensor(args.class_label, 1, pipeline.unet.config.get("num_class_embeds"))
    num_train_timesteps = pipeline.scheduler.config.num_train_timesteps
    if args.timestep_respacing is not None:
        return len(respaced_timesteps(num_train_timesteps, args.timestep_respacing))
    if args.steps is not None and args.steps > num_train_timesteps:
        raise ValueError(f"--steps {args.steps} exceeds the model's {num_train_timesteps} training timesteps.")
    return args.steps or num_train_timesteps


def load_pipeline(model: str, dtype: str, device: torch.device, show_progress: bool) -> DDPMPlusPipeline:
    """A `DDPMPlusPipeline` (from a saved DDPM+ or plain DDPMPipeline folder, or a Hub id) in `dtype` on `device`;
    a `ValueError` naming `--model` and the file at fault for anything that does not load (see
    `DDPMPlusPipeline.from_pretrained`)."""
    from diffusers.utils import logging as diffusers_logging

    from ddpm_plus.pipeline_ddpm_plus import DDPMPlusPipeline

    shown = diffusers_logging.is_progress_bar_enabled()
    if not show_progress:
        diffusers_logging.disable_progress_bar()  # diffusers' "Loading pipeline components" bar
    try:
        with model_option_errors(model):
            pipeline = DDPMPlusPipeline.from_pretrained(model).to(device)
    finally:
        if shown:
            diffusers_logging.enable_progress_bar()
    if pipeline.unet.dtype != DTYPES[dtype]:
        pipeline.to(dtype=DTYPES[dtype])
    pipeline.set_progress_bar_config(leave=False, disable=not show_progress)
    return pipeline


@contextmanager
def model_option_errors(model: str) -> Iterator[None]:
    """Re-raise a `PipelineLoadError` as a `ValueError` that names `--model`, without the loader's traceback."""
    from ddpm_plus.pipeline_ddpm_plus import PipelineLoadError

    try:
        yield
    except PipelineLoadError as error:
        raise ValueError(f"--model {model}: {error}") from None


def sample_layout(directory: Path, count: int, pipeline: DDPMPlusPipeline) -> SampleLayout:
    from ddpm_plus.pipeline_ddpm_plus import image_size

    height, width = image_size(pipeline.unet.config.sample_size)
    channels = pipeline.unet.config.in_channels
    if channels not in (1, 3):
        raise ValueError(f"the model makes images of {channels} channels; PNG files here hold 1 (grey) or 3 (RGB).")
    return SampleLayout(directory, count, height, width, channels)


def check_request(layout: SampleLayout, args: argparse.Namespace, pipeline: DDPMPlusPipeline, steps: int) -> str:
    """Refuse, before any image is made, a run whose archive cannot fit on the disk or whose network batch cannot
    fit in memory; return a line with its cost in network evaluations."""
    size = f"{layout.height}x{layout.width}x{layout.channels}"
    check_disk(
        archive_bytes(layout), f"--num-images {layout.count} of {size} (the .npz archive alone)", layout.directory
    )
    batch = min(args.batch_size, layout.count)
    activation = network_batch_bytes(
        batch,
        first_level_channels(pipeline.unet.config),
        layout.height,
        layout.width,
        pipeline.unet.dtype.itemsize,
    )
    check_memory(activation, f"--batch-size {batch} at {layout.height}x{layout.width}", pipeline.device)
    return f"{layout.count} images x {steps} steps: {layout.count * steps:,} network evaluations in batches of {batch}."


def archive_bytes(layout: SampleLayout) -> int:
    """The size of the `.npz` archive: the images' bytes and the headers (at most a few hundred bytes)."""
    return images_bytes(layout.count, layout.channels, layout.height, layout.width) + ARCHIVE_OVERHEAD


def requested_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings that decide the pixels and are known before the model loads."""
    model = str(Path(args.model).resolve()) if Path(args.model).is_dir() else args.model
    return {
        "model": model,
        "stochasticity": args.stochasticity,
        "class_label": args.class_label,
        "timestep_respacing": args.timestep_respacing,
        "seed": args.seed,
        "dtype": args.dtype,
        "seeding": SEEDING,
    }


def build_manifest(args: argparse.Namespace, pipeline: DDPMPlusPipeline, steps: int) -> dict[str, Any]:
    """What made the images: the settings that decide the pixels (`IMAGE_SETTINGS`), then the run's size and the
    versions of the software."""
    scheduler = json.loads(pipeline.scheduler.to_json_string())
    return {
        **requested_settings(args),
        "scheduler": {key: value for key, value in scheduler.items() if not key.startswith("_")},
        "scheduler_class": type(pipeline.scheduler).__name__,
        "steps": steps,
        "num_images": args.num_images,
        "batch_size": args.batch_size,
        "versions": {name: importlib.metadata.version(name) for name in ("ddpm_plus", "diffusers", "torch")},
    }


def check_resumable(directory: Path, settings: dict[str, Any], overwrite: bool) -> bool:
    """Whether `directory` holds images made with other settings, which `overwrite` replaces: its manifest differs
    from `settings` in one of `IMAGE_SETTINGS` that `settings` has. Without `overwrite`, that or another
    `num_images` raises a `ValueError`: finished work is not replaced without being asked."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        return False
    previous = read_json_object(path)
    pixels = {key: settings[key] for key in IMAGE_SETTINGS if key in settings}
    difference = first_difference(previous, {**pixels, "num_images": settings["num_images"]})
    if difference is not None and not overwrite:
        raise ValueError(
            f"{directory} holds images made with other settings ({difference}); pass --overwrite to replace them, "
            "or give another --out."
        )
    return first_difference(previous, pixels) is not None


def remove_earlier_files(layout: SampleLayout, *, keep_current: bool) -> None:
    """Remove the single images and archives of earlier runs from the layout's folder: all of them, or with
    `keep_current` those that are not this run's (images beyond its count, archives of another count)."""
    for path in layout.sample_files():
        if not (keep_current and layout.holds(path)):
            path.unlink()


def remove_unfinished_files(directory: Path) -> None:
    """Remove the temporary files of writes that a killed run left unfinished (see `atomic_path`)."""
    for unfinished in directory.glob(".*.tmp"):
        unfinished.unlink(missing_ok=True)


def incomplete_chunks(layout: SampleLayout, processes: Processes, batch_size: int) -> list[range]:
    """The chunks in this process's share that lack a complete image. Chunk k holds images
    [k * batch_size, (k + 1) * batch_size), which share one network batch."""
    return [
        chunk
        for chunk in processes.share(chunks_of(layout.count, batch_size))
        if not all(map(layout.is_complete, chunk))
    ]


def generate_chunks(
    pipeline: DDPMPlusPipeline,
    layout: SampleLayout,
    processes: Processes,
    incomplete: Sequence[range],
    args: argparse.Namespace,
    steps: int,
) -> None:
    """Make this process's share of the incomplete chunks (each chunk one network batch) and write their images."""
    mine = processes.share(incomplete)
    with SharedProgress(processes, sum(map(len, incomplete)), sum(map(len, mine)), desc="images") as progress:
        for chunk in mine:
            images = sample_images(
                pipeline,
                chunk,
                seed=args.seed,
                num_inference_steps=steps,
                stochasticity=args.stochasticity,
                class_label=args.class_label,
                timestep_respacing=args.timestep_respacing,
            )
            for index, image in zip(chunk, images, strict=True):
                with atomic_path(layout.image_path(index)) as temporary:
                    image.save(temporary, format="PNG")
            progress.advance(len(chunk))


def write_outputs(layout: SampleLayout, grid_path: Path, nrow: int | None) -> None:
    """Stream every image (all processes' work) into the `.npz` archive, and draw the grid of the first ones; then
    remove what earlier runs of another count left (see `remove_earlier_files`)."""
    write_archive(layout)
    shown = np.stack([read_image(layout, index) for index in range(min(GRID_IMAGES, layout.count))])
    grid = make_grid(shown, nrow=nrow or max(1, round(math.sqrt(len(shown)))))
    with atomic_path(grid_path) as temporary:
        grid.save(temporary, format="PNG")
    remove_earlier_files(layout, keep_current=True)


def write_archive(layout: SampleLayout) -> None:
    """`np.savez(arr_0=images)` of the uint8 (N, H, W, C) images, written one image at a time: the archive that
    `np.load` reads, without N images in memory."""
    header = {
        "descr": "|u1",
        "fortran_order": False,
        "shape": (layout.count, layout.height, layout.width, layout.channels),
    }
    with (
        atomic_path(layout.archive_path) as temporary,
        zipfile.ZipFile(temporary, "x", compression=zipfile.ZIP_STORED, allowZip64=True) as archive,
        archive.open("arr_0.npy", "w", force_zip64=True) as member,
    ):
        np.lib.format.write_array_header_1_0(member, header)
        for index in range(layout.count):
            member.write(read_image(layout, index).tobytes())


def read_image(layout: SampleLayout, index: int) -> np.ndarray:
    """Image `index` as uint8 (H, W, C)."""
    with Image.open(layout.image_path(index)) as image:
        pixels = np.asarray(image)
    return pixels[..., None] if pixels.ndim == 2 else pixels
