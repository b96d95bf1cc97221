"""The settings a checkpoint must share with the run that resumes it (the run signature), and the one-line refusal
that names each one that changed; the settings that may change on resume are reported as applied."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddpm_plus.utils import public_settings

if TYPE_CHECKING:
    from ddpm_plus.training.run_setup import RunSetup

# Settings a checkpoint must share with the run that resumes it: they fix the model, the diffusion and its objective,
# the training data and the position in it. Changing one mid-run would silently train a different model (or, for the
# batch layout and seed, repeat and skip images); every other setting is honoured from the resumed step on.
RESUME_SIGNATURE_KEYS = (
    # the model
    "model_config",
    "unet_config",
    "resolution",
    "learn_sigma",
    "use_ema",
    # the diffusion and the objective
    "prediction_type",
    "variance_type",
    "loss",
    "beta_schedule",
    "beta_start",
    "beta_end",
    "num_train_timesteps",
    "timestep_sampler",
    "snr_gamma",
    "vlb_weight",
    # the training data and the position in it
    "dataset_name",
    "train_data_dir",
    "image_column",
    "held_out_fraction",
    "center_crop",
    "random_flip",
    "train_batch_size",
    "gradient_accumulation_steps",
    "num_processes",
    "seed",
)


def run_signature(args: argparse.Namespace, setup: RunSetup, num_processes: int) -> dict[str, Any]:
    """The settings that a checkpoint and the run resuming it must share (see RESUME_SIGNATURE_KEYS)."""
    resolved = {
        "unet_config": setup.unet_config,
        "resolution": setup.resolution,
        "variance_type": setup.noise_scheduler.config.variance_type,
        "num_processes": num_processes,
    }
    values = {**vars(args), **resolved}
    return json.loads(json.dumps({key: values[key] for key in RESUME_SIGNATURE_KEYS}))  # as a checkpoint records it


def signature_differences(checkpoint_state: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """('name: checkpoint A, now B' for each setting that differs, the settings the checkpoint does not record).

    A checkpoint written before a setting joined the signature is compared through its recorded arguments; the
    UNet config is compared key by key, so that the message names what changed.
    """
    recorded = {**checkpoint_state.get("settings", {}), **checkpoint_state["run"]}
    differences, unrecorded = [], []
    for key, value in current.items():
        if key not in recorded:
            unrecorded.append(key)
        elif key == "unet_config":
            differences += _dict_differences(key, recorded[key], value)
        elif recorded[key] != value:
            differences.append(f"{key}: checkpoint {recorded[key]!r}, now {value!r}")
    return differences, unrecorded


def _dict_differences(name: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [
        f"{name}.{key}: checkpoint {old.get(key)!r}, now {new.get(key)!r}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    ]


def loss_scaler_difference(path: Path, checkpoint_state: dict[str, Any], mixed_precision: str) -> list[str]:
    """A switch to fp16 from a checkpoint without a loss-scaler state, which accelerate cannot load; else []."""
    from accelerate.utils import SCALER_NAME  # accelerate is an extra: `import ddpm_plus.training` works without it

    if mixed_precision != "fp16" or (path / SCALER_NAME).is_file():
        return []
    recorded = checkpoint_state.get("settings", {}).get("mixed_precision")
    return [f"mixed_precision: checkpoint {recorded!r}, now 'fp16' (the checkpoint has no loss-scaler state)"]


def changed_settings(checkpoint_state: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """'name A → B' for each honoured setting (not in the signature) that differs from the checkpoint's record."""
    recorded = checkpoint_state.get("settings", {})
    return [
        f"{key} {recorded[key]!r} → {value!r}"
        for key, value in public_settings(args).items()
        if key in recorded and key != "resume_from_checkpoint" and recorded[key] != value
    ]


def check_resumable(
    path: Path, checkpoint_state: dict[str, Any], current: dict[str, Any], mixed_precision: str
) -> list[str]:
    """ValueError naming each setting of the run signature `current` that differs from the checkpoint's (and a switch
    to fp16 that accelerate cannot load); returns the settings the checkpoint does not record, left unchecked."""
    differences, unrecorded = signature_differences(checkpoint_state, current)
    differences += loss_scaler_difference(path, checkpoint_state, mixed_precision)
    if differences:
        raise ValueError(
            f"Cannot resume from {path}: the run differs in {'; '.join(differences)}. These settings define the "
            "model, its objective or its data; keep them, or start a new run in another --output_dir."
        )
    return unrecorded
