"""Named ``diffusers.UNet2DModel`` configurations: the DDPM paper networks and small CPU models.

Every named configuration is a plain ``dict`` of ``UNet2DModel`` constructor arguments, so it can be passed
to ``UNet2DModel(**config)`` or ``UNet2DModel.from_config(config)`` and dumped to (and read back from) JSON.

Paper networks (Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models", appendix B, and the
authors' TensorFlow code, ``diffusion_tf/models/unet.py``):

* ``ddpm-cifar10``: the 32x32 CIFAR-10 model, 35,746,307 parameters (the count of the original model).
* ``ddpm-256``: the 256x256 CelebA-HQ / LSUN model, 113,673,219 parameters (the count of the original model).
* ``iddpm-cifar10``: ``ddpm-cifar10`` with the learned-variance output head of Nichol & Dhariwal 2021
  ("Improved Denoising Diffusion Probabilistic Models"): 6 output channels, 35,749,766 parameters.

How the TensorFlow network maps onto ``UNet2DModel``: a single attention head over all channels
(``attention_head_dim=None`` makes diffusers use the block's channel count), downsampling by a stride-2
convolution with TF "SAME" padding (``downsample_padding=0``: diffusers then pads right and bottom by one),
the sinusoidal timestep embedding ``[sin, cos]`` with frequencies ``exp(-log(10000) * i / (half - 1))``
(``flip_sin_to_cos=False``, ``freq_shift=1``), GroupNorm with 32 groups and ``eps=1e-6``, and a timestep
embedding of width ``4 * ch``.

Small models (same conventions, sized for CPU):

* ``digits-16``: 16x16 grey images (the default model of the digits training demo), 1,112,801 parameters.
* ``tiny-32``: 32x32 RGB images, 1,113,955 parameters.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import UNet2DModel

from ddpm_plus.utils import read_json_object

# The conventions of the DDPM TensorFlow network, shared by every named configuration. A configuration lists the
# arguments it sets; `unet_config` completes it with UNet2DModel's defaults (diffusers is imported on first use, so
# the training script's `--help` lists the names at once).
_DDPM_CONVENTIONS: dict[str, Any] = {
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "mid_block_type": "UNetMidBlock2D",
    "add_attention": True,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "downsample_padding": 0,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "attention_head_dim": None,
    "norm_eps": 1e-6,
    "resnet_time_scale_shift": "default",
}

# The small CPU models (digits-16, tiny-32): 3 levels, one residual block per level, attention at the lowest
# resolution and in the middle block.
_SMALL_CPU_LAYOUT: dict[str, Any] = {
    **_DDPM_CONVENTIONS,
    "block_out_channels": (32, 64, 64),
    "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    "layers_per_block": 1,
    "dropout": 0.0,
    "norm_num_groups": 16,
}

_CONFIGS: dict[str, dict[str, Any]] = {
    # DDPM paper, CIFAR-10 32x32: ch=128, ch_mult=(1, 2, 2, 2), 2 residual blocks per level, attention at
    # 16x16 (the 2nd level) and in the middle block, dropout 0.1. 35,746,307 parameters, as the TF model.
    "ddpm-cifar10": {
        **_DDPM_CONVENTIONS,
        "sample_size": 32,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (128, 256, 256, 256),
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        "layers_per_block": 2,
        "dropout": 0.1,
        "norm_num_groups": 32,
    },
    # DDPM paper, CelebA-HQ and LSUN 256x256: ch=128, ch_mult=(1, 1, 2, 2, 4, 4), 2 residual blocks per level,
    # attention at 16x16 (the 5th level) and in the middle block, no dropout (as in the authors' LSUN runs).
    # 113,673,219 parameters, as the TF model.
    "ddpm-256": {
        **_DDPM_CONVENTIONS,
        "sample_size": 256,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (128, 128, 256, 256, 512, 512),
        "down_block_types": (
            "DownBlock2D",
            "DownBlock2D",
            "DownBlock2D",
            "DownBlock2D",
            "AttnDownBlock2D",
            "DownBlock2D",
        ),
        "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        "layers_per_block": 2,
        "dropout": 0.0,
        "norm_num_groups": 32,
    },
    # 16x16 grey digits (the training demo): 3 levels (16, 8, 4), one residual block per level, attention at
    # the lowest resolution (4x4) and in the middle block. 1,112,801 parameters.
    "digits-16": {**_SMALL_CPU_LAYOUT, "sample_size": 16, "in_channels": 1, "out_channels": 1},
    # 32x32 RGB for CPU demos: 3 levels (32, 16, 8), one residual block per level, attention at 8x8 and in the
    # middle block. 1,113,955 parameters.
    "tiny-32": {**_SMALL_CPU_LAYOUT, "sample_size": 32, "in_channels": 3, "out_channels": 3},
}
# Improved DDPM style: the DDPM CIFAR-10 network whose output also carries the variance interpolation v of
# Nichol & Dhariwal 2021 (eq. 15), i.e. 6 output channels for variance_type="learned_range". 35,749,766
# parameters (the wider output convolution adds 3 * 128 * 3 * 3 + 3 = 3,459).
_CONFIGS["iddpm-cifar10"] = {**_CONFIGS["ddpm-cifar10"], "out_channels": 6}


@functools.cache
def unet_defaults() -> dict[str, Any]:
    """UNet2DModel's constructor arguments and their defaults."""
    from diffusers import UNet2DModel

    parameters = inspect.signature(UNet2DModel.__init__).parameters.items()
    return {name: parameter.default for name, parameter in parameters if name != "self"}


def available_configs() -> list[str]:
    """Return the names of the built-in configurations, sorted."""
    return sorted(_CONFIGS)


def learns_sigma(config: Mapping[str, Any]) -> bool:
    """Whether a UNet configuration outputs the variance channels too (``out_channels == 2 * in_channels``)."""
    return config["out_channels"] == 2 * config["in_channels"]


def downsampling_factor(config: Mapping[str, Any]) -> int:
    """Total downsampling of a UNet configuration: image sides must be divisible by it.

    diffusers' last down block does not downsample, so the factor is ``2 ** (number of down blocks - 1)``.
    """
    return 2 ** (len(config["down_block_types"]) - 1)


def unet_config(name_or_path: str | Path, *, learn_sigma: bool = False, **overrides: Any) -> dict[str, Any]:
    """Return the ``UNet2DModel`` configuration for a built-in name or a JSON file.

    Args:
        name_or_path: one of :func:`available_configs`, or the path of a JSON ``UNet2DModel`` configuration
            (a path ending in ``.json`` or an existing file; a diffusers ``config.json`` works as is).
        learn_sigma: make the model output the variance interpolation too (``variance_type="learned_range"``):
            ``out_channels`` is doubled, unless the configuration already learns it (``out_channels`` is
            ``2 * in_channels``, as in ``iddpm-cifar10``), which is kept as is.
        **overrides: ``UNet2DModel`` arguments replacing those of the configuration, applied before
            ``learn_sigma``. Overriding ``in_channels`` alone sets ``out_channels`` to match it.

    Raises:
        ValueError: for an unknown name, an argument ``UNet2DModel`` does not accept, or an inconsistent
            configuration.
    """
    config = _base_config(name_or_path)
    _check_keys(overrides, source="override")
    if "in_channels" in overrides and "out_channels" not in overrides:
        overrides["out_channels"] = overrides["in_channels"]
    config.update(_tuples_for_lists(overrides))
    if learn_sigma and not learns_sigma(config):
        config["out_channels"] *= 2
    _check_consistency(config)
    return config


def build_unet(name_or_path: str | Path, *, learn_sigma: bool = False, **overrides: Any) -> UNet2DModel:
    """Build a freshly initialised ``UNet2DModel`` from :func:`unet_config` (same arguments)."""
    from diffusers import UNet2DModel

    return UNet2DModel.from_config(unet_config(name_or_path, learn_sigma=learn_sigma, **overrides))


def save_unet_config(
    name_or_path: str | Path, path: str | Path, *, learn_sigma: bool = False, **overrides: Any
) -> Path:
    """Write :func:`unet_config` of ``name_or_path`` as JSON to ``path`` (read back with ``unet_config(path)``)."""
    path = Path(path)
    config = unet_config(name_or_path, learn_sigma=learn_sigma, **overrides)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def _base_config(name_or_path: str | Path) -> dict[str, Any]:
    """Copy of a named configuration, or the configuration read from a JSON file."""
    if str(name_or_path) in _CONFIGS:
        return {**unet_defaults(), **_CONFIGS[str(name_or_path)]}
    path = Path(name_or_path)
    if path.suffix == ".json" or path.is_file():
        return _read_json_config(path)
    raise ValueError(
        f"Unknown UNet config {str(name_or_path)!r}: expected one of {', '.join(available_configs())} "
        "or the path of a JSON UNet2DModel config."
    )


def _read_json_config(path: Path) -> dict[str, Any]:
    """Read a JSON ``UNet2DModel`` configuration.

    diffusers' metadata keys (``_class_name``, ...) are dropped and missing arguments get ``UNet2DModel``'s
    defaults, so the result is complete and does not depend on the file's key order or omissions.
    """
    if not path.is_file():
        raise ValueError(f"UNet config file {path} does not exist.")
    config = {key: value for key, value in read_json_object(path).items() if not key.startswith("_")}
    _check_keys(config, source=f"key in {path}")
    return _tuples_for_lists({**unet_defaults(), **config})


def _check_keys(config: Mapping[str, Any], *, source: str) -> None:
    """Raise a ValueError naming the keys that ``UNet2DModel`` does not accept."""
    unknown = sorted(set(config) - set(unet_defaults()))
    if unknown:
        raise ValueError(
            f"UNet2DModel does not accept the {source}(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(sorted(unet_defaults()))}."
        )


def _check_consistency(config: Mapping[str, Any]) -> None:
    """Raise a ValueError for mismatched block lists or channel counts GroupNorm cannot split into groups."""
    levels = {key: len(config[key]) for key in ("block_out_channels", "down_block_types", "up_block_types")}
    if len(set(levels.values())) != 1:
        raise ValueError(f"UNet config needs one entry per level in each of these lists, got lengths {levels}.")
    groups = config["norm_num_groups"]
    indivisible = [channels for channels in config["block_out_channels"] if channels % groups]
    if indivisible:
        raise ValueError(f"block_out_channels {indivisible} are not divisible by norm_num_groups={groups}.")


def _tuples_for_lists(config: Mapping[str, Any]) -> dict[str, Any]:
    """Turn list values into tuples, so that configurations read from JSON compare equal to built-in ones."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in config.items()}
