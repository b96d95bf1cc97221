"""Fine-tuning: the UNet and noise scheduler of a pretrained pipeline (`--pretrained_model_name_or_path`).

A saved ddpm_plus folder, a plain diffusers `DDPMPipeline` folder, a folder written by `ddpm-plus convert`, or a Hub
id (only configurations and safetensors weights are downloaded, never code). The model flags that the user did not
give take the pretrained model's values, so that what a run records is what it trains; a given one that differs is
refused in one line before any training.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddpm_plus.models import learns_sigma
from ddpm_plus.pipeline_ddpm_plus import PipelineLoadError, check_component_folders, image_size, pretrained_folder
from ddpm_plus.training.arguments import PRETRAINED_OPTION

PRETRAINED_OPTION = PRETRAINED_OPTION
_OPTION = PRETRAINED_OPTION


@dataclass(frozen=True)
class Pretrained:
    """A pretrained pipeline's local folder and the configurations of its UNet and scheduler."""

    name_or_path: str
    directory: Path
    unet_config: dict[str, Any]
    scheduler_config: dict[str, Any]

    def model_values(self) -> dict[str, Any]:
        """The model flags' values for this model (`arguments.PRETRAINED_MODEL_FLAGS` but --model_config)."""
        height, width = image_size(self.unet_config["sample_size"])
        if height != width:
            raise ValueError(f"{_OPTION} {self.name_or_path} makes {height}x{width} images; training is square only.")
        scheduler = self.scheduler_config
        return {
            "learn_sigma": learns_sigma(self.unet_config),
            "resolution": height,
            "num_train_timesteps": scheduler["num_train_timesteps"],
            "beta_schedule": scheduler["beta_schedule"],
            "beta_start": scheduler["beta_start"],
            "beta_end": scheduler["beta_end"],
            "prediction_type": scheduler["prediction_type"],
            "variance_type": scheduler["variance_type"],
        }


def load_pretrained(name_or_path: str) -> Pretrained:
    """The configurations of a pretrained pipeline's `unet/` and `scheduler/` (a Hub id is downloaded first); a
    `ValueError` in one line for anything that is not a pipeline this script can fine-tune."""
    from diffusers import UNet2DModel

    from ddpm_plus.scheduling_ddpm_plus import DDPMPlusScheduler

    try:
        directory = pretrained_folder(name_or_path)
        check_component_folders(directory)
    except PipelineLoadError as error:
        raise ValueError(f"{_OPTION} {name_or_path}: {error}") from None
    unet_config = _public(UNet2DModel.load_config(directory, subfolder="unet"))
    scheduler_config = _public(DDPMPlusScheduler.load_config(directory, subfolder="scheduler"))
    if unet_config.get("num_class_embeds") is not None:
        raise ValueError(
            f"{_OPTION} {name_or_path} is class-conditional; this script trains unconditional models (its data "
            "carries no labels)."
        )
    for key in ("trained_betas", "rescale_betas_zero_snr"):
        if scheduler_config.get(key):
            raise ValueError(f"{_OPTION} {name_or_path}: a scheduler with {key} cannot be trained here.")
    scheduler = DDPMPlusScheduler.from_config(scheduler_config)  # every key, checked; a DDPMScheduler's too
    return Pretrained(name_or_path, directory, unet_config, _public(scheduler.config))


def apply_pretrained(args: argparse.Namespace, pretrained: Pretrained) -> None:
    """Give the model flags that were not given (None) the pretrained model's values; refuse one that differs."""
    if args.model_config is not None:
        raise ValueError(
            f"--model_config {args.model_config} and {_OPTION} both give the UNet; drop --model_config to fine-tune."
        )
    for name, value in pretrained.model_values().items():
        given = getattr(args, name)
        if given is not None and given != value:
            raise ValueError(
                f"--{name} {given} conflicts with {pretrained.name_or_path}, whose model has {name} = {value}; leave "
                f"--{name} out to keep it."
            )
        setattr(args, name, value)
    if Path(args.output_dir).resolve() == pretrained.directory.resolve():
        raise ValueError(f"--output_dir {args.output_dir} is the pretrained model's folder; give another one.")


def _public(config: dict[str, Any]) -> dict[str, Any]:
    """A config without diffusers' bookkeeping keys (`_class_name`, `_diffusers_version`, ...)."""
    return {key: value for key, value in dict(config).items() if not key.startswith("_")}
