"""What the arguments of a run resolve to, checked before any work: the UNet config at the training resolution (or
the pretrained model's, when fine-tuning), the noise scheduler, the verified checkpoint to resume from or the earlier
run that a new one replaces, the training set, the held-out images and the reference images of the FID."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import torch

from ddpm_plus.data import load_image_dataset
from ddpm_plus.models import downsampling_factor, learns_sigma, unet_config
from ddpm_plus.resources import FLOAT32_BYTES, check_memory, first_level_channels, network_batch_bytes
from ddpm_plus.scheduling_ddpm_plus import LEARNED_VARIANCE_TYPES, DDPMPlusScheduler
from ddpm_plus.training.arguments import check_timesteps, data_source, eval_split
from ddpm_plus.training.checkpoints import EarlierRun, ResumeChoice, check_new_run, resolve_resume_checkpoint
from ddpm_plus.training.pretrained import Pretrained, apply_pretrained, load_pretrained


@dataclass
class RunSetup:
    """What the arguments resolve to: the UNet config, the noise scheduler, the data sets, the verified checkpoint."""

    unet_config: dict[str, Any]
    noise_scheduler: DDPMPlusScheduler
    train_set: torch.utils.data.Dataset
    eval_images: torch.Tensor | None
    resolution: int
    resume: ResumeChoice | None = None
    fid_reference_set: torch.utils.data.Dataset | None = None  # the training images without augmentation
    pretrained: Pretrained | None = None  # the model that fine-tuning starts from
    replaced: EarlierRun | None = None  # what --overwrite_output_dir replaces


def resolve_unet_config(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """The UNet config at the training resolution, and that resolution; ValueError when they do not fit."""
    config = unet_config(args.model_config, learn_sigma=args.learn_sigma)
    resolution = args.resolution or config["sample_size"]
    if not isinstance(resolution, int):
        raise ValueError(f"The model config has a non-square sample_size {resolution}; pass --resolution.")
    factor = downsampling_factor(config)
    if resolution % factor:
        raise ValueError(
            f"--resolution {resolution} is not divisible by {factor}, the total downsampling of the UNet config "
            f"{args.model_config!r}; use a multiple of {factor}."
        )
    config["sample_size"] = resolution
    return config, resolution


def build_noise_scheduler(
    args: argparse.Namespace, config: dict[str, Any], pretrained: Pretrained | None = None
) -> DDPMPlusScheduler:
    """The training scheduler: the pretrained model's, or one from the flags, whose variance type follows the
    model's output channels unless given."""
    learned = learns_sigma(config)
    variance_type = args.variance_type or ("learned_range" if learned else "fixed_small")
    if learned != (variance_type in LEARNED_VARIANCE_TYPES):
        raise ValueError(
            f"--variance_type {variance_type} does not fit the model: a model that learns sigma (--learn_sigma or "
            f"a config with doubled output channels) needs {' or '.join(LEARNED_VARIANCE_TYPES)}, and those need one."
        )
    if args.loss == "hybrid" and not learned:
        raise ValueError("--loss hybrid trains the learned variances: add --learn_sigma.")
    if pretrained is not None:
        return DDPMPlusScheduler.from_config(pretrained.scheduler_config)
    return DDPMPlusScheduler(
        num_train_timesteps=args.num_train_timesteps,
        beta_start=args.beta_start,
        beta_end=args.beta_end,
        beta_schedule=args.beta_schedule,
        variance_type=variance_type,
        prediction_type=args.prediction_type,
    )


def load_split(
    args: argparse.Namespace, resolution: int, num_channels: int, split: str, *, center_crop: bool, random_flip: bool
) -> torch.utils.data.Dataset:
    """One split of the run's data source at the training resolution."""
    return load_image_dataset(
        data_source(args),
        split=split,
        resolution=resolution,
        num_channels=num_channels,
        center_crop=center_crop,
        random_flip=random_flip,
        cache_dir=args.cache_dir,
        image_column=args.image_column,
        held_out_fraction=args.held_out_fraction,
    )


def load_datasets(
    args: argparse.Namespace, resolution: int, num_channels: int
) -> tuple[torch.utils.data.Dataset, torch.Tensor | None]:
    """The training set and the held-out images (a tensor, or None when there is no held-out split)."""
    train_set = load_split(
        args, resolution, num_channels, "train", center_crop=args.center_crop, random_flip=args.random_flip
    )
    split = eval_split(args)
    if split is None:
        return train_set, None
    eval_set = load_split(args, resolution, num_channels, split, center_crop=True, random_flip=False)
    count = len(eval_set) if args.num_eval_images is None else min(args.num_eval_images, len(eval_set))
    return train_set, torch.stack([eval_set[index] for index in range(count)])


def check_request(args: argparse.Namespace, config: dict[str, Any], resolution: int) -> None:
    """Refuse, before any data is read, batches whose first UNet activation cannot fit in memory: a training batch
    holds it and its gradient, an evaluation batch and the grid (one batch) hold it once."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batches = (
        ("--train_batch_size", args.train_batch_size, 2),
        ("--eval_batch_size", args.eval_batch_size, 1),
        ("--num_grid_images", args.num_grid_images, 1),
    )
    for option, batch_size, copies in batches:
        activation = network_batch_bytes(
            batch_size, first_level_channels(config), resolution, resolution, FLOAT32_BYTES
        )
        check_memory(copies * activation, f"{option} {batch_size} at --resolution {resolution}", device)


def prepare_run(args: argparse.Namespace) -> RunSetup:
    """Resolve and check everything that can fail on bad input, before any training: after `check_arguments`, with
    the lock of --output_dir held (the folder's checkpoints are read here)."""
    pretrained = None
    if args.pretrained_model_name_or_path is not None:
        pretrained = load_pretrained(args.pretrained_model_name_or_path)
        apply_pretrained(args, pretrained)
        check_timesteps(args)
        config, resolution = dict(pretrained.unet_config), args.resolution
    else:
        config, resolution = resolve_unet_config(args)
    check_request(args, config, resolution)
    noise_scheduler = build_noise_scheduler(args, config, pretrained)
    replaced = check_new_run(args.output_dir, args.resume_from_checkpoint, args.overwrite_output_dir)
    resume = resolve_resume_checkpoint(args.resume_from_checkpoint, args.output_dir)
    train_set, eval_images = load_datasets(args, resolution, config["in_channels"])
    fid_reference_set = None
    if args.eval_fid_every:
        fid_reference_set = load_split(
            args, resolution, config["in_channels"], "train", center_crop=args.center_crop, random_flip=False
        )
    return RunSetup(
        config, noise_scheduler, train_set, eval_images, resolution, resume, fid_reference_set, pretrained, replaced
    )
