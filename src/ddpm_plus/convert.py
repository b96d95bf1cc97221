"""Checkpoints of openai/improved-diffusion and openai/guided-diffusion as DDPM+ pipeline folders.

`from_openai(checkpoint, flags, source=...)` reads a released `.pt` state dict (with `torch.load(...,
weights_only=True)`: no pickle code runs) and the flags that the upstream README prints next to it, and returns a
`DDPMPlusPipeline` of a plain diffusers `UNet2DModel` and a `DDPMPlusScheduler` that computes what the upstream code
computes: the same network outputs to float32 round-off, the same respaced samples, the same bound (docs/converting.md).

The flags are read with each source's own defaults (improved-diffusion rescales the timesteps to 0..1000 by default,
guided-diffusion does not). Everything that `UNet2DModel` cannot represent is refused with one line before any
weight is read: several attention head widths (a fixed `num_heads` over levels of different widths), a first
channel multiplier other than 1 (guided-diffusion's 512x512 model), upsamplers and classifiers. A checkpoint that
does not fit its flags is refused naming the first key that differs and the flag that likely does.

How the upstream network maps onto `UNet2DModel`, block by block:

* time embedding: the sinusoids of t (cos first) → `Timesteps(flip_sin_to_cos=True, freq_shift=0)`; timesteps
  rescaled by 1000/T → a learned-table embedding (`time_embedding_type="learned"`) holding the rescaled sinusoids,
  computed with the same float32 operations, so the integer timesteps of diffusers give the upstream embedding.
* `ResBlock` → `ResnetBlock2D` (`use_scale_shift_norm` → `resnet_time_scale_shift="scale_shift"`); a `ResBlock`
  that resamples (`resblock_updown`) → the resnet down/upsamplers (`downsample_type="resnet"`).
* `AttentionBlock` → `Attention` (the qkv projection split into to_q, to_k, to_v in the legacy or the new order).
* `label_emb` → `class_embedding` (`num_class_embeds`).
"""

from __future__ import annotations

import hashlib
import pickle
import shlex
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddpm_plus.scheduling_ddpm_plus import respaced_timesteps
from ddpm_plus.utils import atomic_directory

SOURCES = ("improved-diffusion", "guided-diffusion")
NUM_CLASSES = 1000  # both sources' class-conditional models are ImageNet models
UPSTREAM_LICENSE = "mit"  # openai/improved-diffusion and openai/guided-diffusion are MIT-licensed

# Each source's model and diffusion flags with the defaults of its `model_and_diffusion_defaults()`.
_COMMON_DEFAULTS = {
    "image_size": 64,
    "num_channels": 128,
    "num_res_blocks": 2,
    "num_heads": 4,
    "num_heads_upsample": -1,
    "attention_resolutions": "16,8",
    "dropout": 0.0,
    "learn_sigma": False,
    "class_cond": False,
    "diffusion_steps": 1000,
    "noise_schedule": "linear",
    "timestep_respacing": "",
    "use_kl": False,
    "predict_xstart": False,
    "use_checkpoint": False,
    "use_scale_shift_norm": True,
}
DEFAULT_FLAGS = {
    "improved-diffusion": {
        **_COMMON_DEFAULTS,
        "sigma_small": False,
        "rescale_timesteps": True,
        "rescale_learned_sigmas": True,
    },
    "guided-diffusion": {
        **_COMMON_DEFAULTS,
        "num_head_channels": -1,
        "channel_mult": "",
        "resblock_updown": False,
        "use_fp16": False,
        "use_new_attention_order": False,
        "rescale_timesteps": False,
        "rescale_learned_sigmas": False,
    },
}
# Each source's default channel multipliers per image size (when `channel_mult` is not given).
DEFAULT_CHANNEL_MULT = {
    "improved-diffusion": {256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2)},
    "guided-diffusion": {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)},
}
# Flags that change nothing in the converted pipeline: read, and named in a note when set.
NO_EFFECT_FLAGS = {
    "use_kl": "changes the training loss only",
    "rescale_learned_sigmas": "changes the training loss only",
    "use_checkpoint": "is gradient checkpointing, for training only",
    "use_fp16": "ran upstream's network in float16; the converted UNet holds the weights upcast exactly to float32 "
    "(pipe.to(torch.float16) runs it in half precision)",
}
SAMPLING_SCRIPT_FLAGS = ("batch_size", "num_samples", "use_ddim", "clip_denoised", "model_path")
UPSAMPLER_FLAGS = ("large_size", "small_size", "base_samples")
CLASSIFIER_PREFIX = "classifier_"


class ConversionError(ValueError):
    """A checkpoint or flags that cannot be converted; the message is one line saying why."""


@dataclass(frozen=True)
class OpenAIModel:
    """What the flags say about an upstream model, in the terms needed to convert it."""

    source: str
    flags: dict[str, Any]
    channel_mult: tuple[int, ...]
    attention_levels: frozenset[int]
    attention_head_dim: int | None

    @property
    def num_steps(self) -> int:
        return self.flags["diffusion_steps"]

    @property
    def rescaled_timesteps(self) -> bool:
        """True when the network sees t · 1000/T rather than t (1000/T = 1 changes nothing)."""
        return bool(self.flags["rescale_timesteps"]) and self.num_steps != 1000

    @property
    def class_conditional(self) -> bool:
        return bool(self.flags["class_cond"])

    @property
    def widths(self) -> list[int]:
        return [self.flags["num_channels"] * mult for mult in self.channel_mult]


# --------------------------------------------------------------------------------------------- flags


def parse_flags(flags: str, source: str) -> tuple[dict[str, Any], list[str]]:
    """The upstream flags `"--name value ..."` over the source's defaults, typed as the defaults are (booleans as
    upstream's str2bool reads them); returns the flags and notes on the flags that have no effect here."""
    if source not in SOURCES:
        raise ConversionError(f"--from must be one of {', '.join(SOURCES)}, got {source!r}.")
    defaults = DEFAULT_FLAGS[source]
    values = dict(defaults)
    notes = []
    for name, text in _flag_pairs(flags):
        if name in UPSAMPLER_FLAGS:
            raise ConversionError(
                f"--{name} belongs to an upsampler (super-resolution) model, which is conditioned on a low-resolution "
                "image that UNet2DModel does not take: upsampler checkpoints are not supported."
            )
        if name.startswith(CLASSIFIER_PREFIX):
            raise ConversionError(
                f"--{name} belongs to a noisy-image classifier, not a diffusion model: classifier checkpoints are not "
                "supported (convert the diffusion model; classifier guidance is not part of ddpm_plus)."
            )
        if name in SAMPLING_SCRIPT_FLAGS:
            notes.append(f"--{name} is a flag of upstream's sampling scripts, not of the model: ignored")
            continue
        if name not in defaults:
            raise ConversionError(
                f"unknown {source} flag --{name}; its model and diffusion flags are: "
                f"{', '.join('--' + key for key in defaults)}."
            )
        values[name] = _typed(name, text, defaults[name])
    notes += [
        f"--{name} {values[name]} {effect}"
        for name, effect in NO_EFFECT_FLAGS.items()
        if name in values and values[name] != defaults[name]
    ]
    return values, notes


def _flag_pairs(flags: str) -> Iterator[tuple[str, str]]:
    """(name, value) of `--name value` and `--name=value` tokens, shell-quoted as a README prints them."""
    try:
        tokens = shlex.split(flags)
    except ValueError as error:
        raise ConversionError(f"the flags do not parse ({error}).") from None
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if not token.startswith("--") or len(token) == 2:
            raise ConversionError(f"the flags do not parse: expected --name value, got {token!r}.")
        name, equals, value = token[2:].partition("=")
        if not equals:
            if index + 1 >= len(tokens) or tokens[index + 1].startswith("--"):
                raise ConversionError(f"the flags do not parse: --{name} has no value.")
            index += 1
            value = tokens[index]
        yield name, value
        index += 1


def _typed(name: str, text: str, default: Any) -> Any:
    """`text` read as the type of the flag's default, as upstream's argument parser reads it."""
    try:
        if isinstance(default, bool):
            return _str2bool(text)
        return type(default)(text)
    except ValueError:
        kind = "a boolean" if isinstance(default, bool) else type(default).__name__
        raise ConversionError(f"the flags do not parse: --{name} takes {kind}, got {text!r}.") from None


def _str2bool(text: str) -> bool:
    if text.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if text.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise ValueError(text)


def describe_model(flags: str, source: str) -> tuple[OpenAIModel, list[str]]:
    """The model the flags describe, or a `ConversionError` saying why `UNet2DModel` cannot represent it."""
    values, notes = parse_flags(flags, source)
    channel_mult = _channel_mult(values, source)
    if channel_mult[0] != 1:
        raise ConversionError(
            f"channel_mult {channel_mult} starts with {channel_mult[0]}: UNet2DModel's first level has the width of "
            "its input convolution and time embedding (num_channels), so the first multiplier must be 1 (this is "
            "guided-diffusion's 512x512 model)."
        )
    if values["noise_schedule"] not in ("linear", "cosine"):
        raise ConversionError(f"unknown --noise_schedule {values['noise_schedule']!r}; it is linear or cosine.")
    if values["diffusion_steps"] < 2:
        raise ConversionError(f"--diffusion_steps must be at least 2, got {values['diffusion_steps']}.")
    if values["timestep_respacing"]:
        try:
            respaced_timesteps(values["diffusion_steps"], values["timestep_respacing"])
        except ValueError as error:
            raise ConversionError(str(error)) from None
        notes.append(
            f"--timestep_respacing {values['timestep_respacing']} is how upstream samples this model: the model card "
            f"says so; sample with pipe(timestep_respacing={values['timestep_respacing']!r})"
        )
    levels = _attention_levels(values, channel_mult)
    model = OpenAIModel(source, values, channel_mult, levels, _attention_head_dim(values, channel_mult, levels))
    return model, notes


def _channel_mult(values: dict[str, Any], source: str) -> tuple[int, ...]:
    text = values.get("channel_mult", "")
    if text:
        try:
            return tuple(int(mult) for mult in text.split(","))
        except ValueError:
            raise ConversionError(f"--channel_mult must be comma-separated integers, got {text!r}.") from None
    size = values["image_size"]
    defaults = DEFAULT_CHANNEL_MULT[source]
    if size not in defaults:
        sizes = ", ".join(map(str, sorted(defaults)))
        raise ConversionError(f"--image_size {size} has no channel_mult in {source} (it has {sizes}).")
    return defaults[size]


def _attention_levels(values: dict[str, Any], channel_mult: tuple[int, ...]) -> frozenset[int]:
    """The levels (0 = full resolution) with attention: upstream's ds = image_size // resolution."""
    try:
        resolutions = [int(res) for res in values["attention_resolutions"].split(",")]
    except ValueError:
        raise ConversionError(
            f"--attention_resolutions must be comma-separated integers, got {values['attention_resolutions']!r}."
        ) from None
    downsampling = {values["image_size"] // res for res in resolutions if res > 0}
    return frozenset(level for level in range(len(channel_mult)) if 2**level in downsampling)


def _attention_head_dim(values: dict[str, Any], channel_mult: tuple[int, ...], levels: frozenset[int]) -> int | None:
    """UNet2DModel's one `attention_head_dim` for every attention layer (None: one head of the layer's width), or a
    `ConversionError` when the upstream layers have head widths that one setting cannot give."""
    widths = [values["num_channels"] * mult for mult in channel_mult]
    layers = [(widths[level], "num_heads") for level in sorted(levels)] + [(widths[-1], "num_heads")]
    layers += [(widths[level], "num_heads_upsample") for level in sorted(levels)]
    head_widths = {}
    for channels, heads_flag in layers:
        heads = _num_heads(values, channels, heads_flag)
        head_widths.setdefault(channels // heads, []).append(channels)
    if len(head_widths) == 1:
        (head_dim,) = head_widths
        return head_dim
    if all(head_dim == channels for head_dim, layer_widths in head_widths.items() for channels in layer_widths):
        return None  # one head per layer: diffusers' attention_head_dim=None
    described = ", ".join(
        f"{head_dim} ({'/'.join(map(str, sorted(set(ws))))} channels)" for head_dim, ws in sorted(head_widths.items())
    )
    raise ConversionError(
        f"the attention layers have head widths {described}: UNet2DModel has one attention head width "
        "(attention_head_dim) for all layers, so a fixed number of heads over layers of different widths cannot be "
        "represented (a model with --num_head_channels can)."
    )


def _num_heads(values: dict[str, Any], channels: int, heads_flag: str) -> int:
    head_channels = values.get("num_head_channels", -1)
    if head_channels != -1:
        if head_channels <= 0 or channels % head_channels:
            raise ConversionError(f"--num_head_channels {head_channels} does not divide {channels} channels.")
        return channels // head_channels
    heads = values[heads_flag]
    if heads_flag == "num_heads_upsample" and heads == -1:
        heads = values["num_heads"]
    if heads <= 0 or channels % heads:
        raise ConversionError(f"--{heads_flag} {heads} does not divide {channels} channels.")
    return heads


# --------------------------------------------------------------------------------------------- diffusers configs


def unet_config(model: OpenAIModel) -> dict[str, Any]:
    """The `UNet2DModel` config of the upstream network."""
    flags = model.flags
    num_levels = len(model.channel_mult)
    updown = bool(flags.get("resblock_updown", False))
    plain_down, plain_up = (
        ("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D") if updown else ("DownBlock2D", "UpBlock2D")
    )
    config = {
        "sample_size": flags["image_size"],
        "in_channels": 3,
        "out_channels": 6 if flags["learn_sigma"] else 3,
        "down_block_types": [
            "AttnDownBlock2D" if level in model.attention_levels else plain_down for level in range(num_levels)
        ],
        "up_block_types": [
            "AttnUpBlock2D" if level in model.attention_levels else plain_up for level in reversed(range(num_levels))
        ],
        "block_out_channels": model.widths,
        "layers_per_block": flags["num_res_blocks"],
        "downsample_type": "resnet" if updown else "conv",
        "upsample_type": "resnet" if updown else "conv",
        "dropout": flags["dropout"],
        "attention_head_dim": model.attention_head_dim,
        "norm_num_groups": 32,
        "attn_norm_num_groups": 32,  # else the middle attention of a scale-shift UNet2DModel has no GroupNorm
        "norm_eps": 1e-5,
        "resnet_time_scale_shift": "scale_shift" if flags["use_scale_shift_norm"] else "default",
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "num_class_embeds": NUM_CLASSES if model.class_conditional else None,
    }
    if model.rescaled_timesteps:
        config.update(time_embedding_type="learned", num_train_timesteps=model.num_steps)
    return config


def scheduler_config(model: OpenAIModel) -> dict[str, Any]:
    """The `DDPMPlusScheduler` config of the upstream diffusion (its sampling scripts clip x̂_0 to [-1, 1])."""
    flags = model.flags
    if flags["learn_sigma"]:
        variance_type = "learned_range"
    elif flags.get("sigma_small", False):
        variance_type = "fixed_small"
    else:
        variance_type = "fixed_large"
    config = {
        "num_train_timesteps": model.num_steps,
        "variance_type": variance_type,
        "prediction_type": "sample" if flags["predict_xstart"] else "epsilon",
        "clip_sample": True,
    }
    if flags["noise_schedule"] == "cosine":  # ᾱ(s) = cos²((s + 0.008) / 1.008 · π/2), β capped at 0.999
        config["beta_schedule"] = "squaredcos_cap_v2"
    else:  # linear, scaled so that any T has the β range of T = 1000
        scale = 1000 / model.num_steps
        config.update(beta_schedule="linear", beta_start=scale * 0.0001, beta_end=scale * 0.02)
    return config


# --------------------------------------------------------------------------------------------- key mapping

# Parameter names inside one upstream block → inside the diffusers block, per kind of block.
_RESNET_NAMES = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_BLOCK_NAMES = {
    "resnet": _RESNET_NAMES,
    "downsample": {"op": "conv"},
    "upsample": {"conv": "conv"},
    "attention": {"norm": "group_norm", "proj_out": "to_out.0"},  # qkv is split (`_split_qkv`)
    "module": {"": ""},
}


def block_plan(model: OpenAIModel) -> list[tuple[str, str, str]]:
    """(upstream prefix, diffusers prefix, kind) of every block, in upstream's order."""
    flags = model.flags
    num_levels = len(model.channel_mult)
    num_res_blocks = flags["num_res_blocks"]
    resample = "resnet" if flags.get("resblock_updown", False) else None
    plan = [
        ("time_embed.0", "time_embedding.linear_1", "module"),
        ("time_embed.2", "time_embedding.linear_2", "module"),
    ]
    if model.class_conditional:
        plan.append(("label_emb", "class_embedding", "module"))
    plan.append(("input_blocks.0.0", "conv_in", "module"))
    index = 1
    for level in range(num_levels):
        for block in range(num_res_blocks):
            plan.append((f"input_blocks.{index}.0", f"down_blocks.{level}.resnets.{block}", "resnet"))
            if level in model.attention_levels:
                plan.append((f"input_blocks.{index}.1", f"down_blocks.{level}.attentions.{block}", "attention"))
            index += 1
        if level != num_levels - 1:
            plan.append((f"input_blocks.{index}.0", f"down_blocks.{level}.downsamplers.0", resample or "downsample"))
            index += 1
    plan += [
        ("middle_block.0", "mid_block.resnets.0", "resnet"),
        ("middle_block.1", "mid_block.attentions.0", "attention"),
        ("middle_block.2", "mid_block.resnets.1", "resnet"),
    ]
    index = 0
    for up, level in enumerate(reversed(range(num_levels))):
        for block in range(num_res_blocks + 1):
            plan.append((f"output_blocks.{index}.0", f"up_blocks.{up}.resnets.{block}", "resnet"))
            layer = 1
            if level in model.attention_levels:
                plan.append((f"output_blocks.{index}.1", f"up_blocks.{up}.attentions.{block}", "attention"))
                layer = 2
            if level != 0 and block == num_res_blocks:
                plan.append((f"output_blocks.{index}.{layer}", f"up_blocks.{up}.upsamplers.0", resample or "upsample"))
            index += 1
    plan += [("out.0", "conv_norm_out", "module"), ("out.2", "conv_out", "module")]
    return plan


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], model: OpenAIModel) -> dict[str, torch.Tensor]:
    """The upstream weights under diffusers' names, in float32 (fp16 checkpoints are upcast exactly), plus the
    learned time-embedding table of a model with rescaled timesteps. Every upstream key must be used once."""
    converted = {}
    used = set()
    for upstream_prefix, diffusers_prefix, kind in block_plan(model):
        for key in [key for key in state_dict if key.startswith(upstream_prefix + ".")]:
            name = key[len(upstream_prefix) + 1 :]
            if kind == "attention" and name.startswith("qkv."):
                parameter = name.split(".", 1)[1]
                for target, value in _split_qkv(state_dict[key], model).items():
                    converted[f"{diffusers_prefix}.{target}.{parameter}"] = value
            else:
                converted[f"{diffusers_prefix}.{_rename(key, name, kind)}"] = _as_linear(state_dict[key], kind, name)
            used.add(key)
    unused = [key for key in state_dict if key not in used]
    if unused:
        raise ConversionError(
            f"the checkpoint has {unused[0]} ({len(unused)} unexpected keys), which the flags do not give; "
            f"check {likely_flag(unused[0])}."
        )
    if model.rescaled_timesteps:
        converted["time_proj.weight"] = rescaled_timestep_table(model.num_steps, model.flags["num_channels"])
    return {key: value.to(torch.float32) for key, value in converted.items()}


def _rename(key: str, name: str, kind: str) -> str:
    """The diffusers name of weight `name` (of the checkpoint's `key`) inside a block of `kind`."""
    for upstream, diffusers in _BLOCK_NAMES[kind].items():
        if not upstream:
            return name
        if name.startswith(upstream + "."):
            return diffusers + name[len(upstream) :]
    raise ConversionError(
        f"the checkpoint's {key} does not fit the network of the flags (a {kind} block there); "
        f"check {likely_flag(key)}."
    )


def _as_linear(value: torch.Tensor, kind: str, name: str) -> torch.Tensor:
    """Attention's 1x1 conv1d weights (C, C, 1) as the linear weights (C, C) of diffusers' Attention."""
    if kind == "attention" and name.startswith("proj_out.") and value.ndim == 3:
        return value[..., 0]
    return value


def _split_qkv(value: torch.Tensor, model: OpenAIModel) -> dict[str, torch.Tensor]:
    """to_q, to_k, to_v from upstream's fused qkv projection: head by head then q/k/v in the legacy order
    (QKVAttentionLegacy), q/k/v then head by head in the new order (use_new_attention_order)."""
    if value.ndim == 3:
        value = value[..., 0]
    channels = value.shape[0] // 3
    if model.flags.get("use_new_attention_order", False):
        q, k, v = value.chunk(3, dim=0)
    else:
        head_dim = model.attention_head_dim or channels
        heads = value.reshape(channels // head_dim, 3, head_dim, *value.shape[1:])
        q, k, v = (heads[:, part].reshape(channels, *value.shape[1:]) for part in range(3))
    return {"to_q": q, "to_k": k, "to_v": v}


def rescaled_timestep_table(num_steps: int, dim: int) -> torch.Tensor:
    """(T, dim) sinusoidal embeddings of t · 1000/T for t = 0..T-1, with upstream's float32 operations."""
    from diffusers.models.embeddings import get_timestep_embedding

    rescaled = torch.arange(num_steps).float() * (1000.0 / num_steps)
    return get_timestep_embedding(rescaled, dim, flip_sin_to_cos=True, downscale_freq_shift=0)


# Where a key that the flags do not explain most likely comes from.
_KEY_FLAGS = (
    ("label_emb", "--class_cond"),
    ("out.2", "--learn_sigma"),
    ("emb_layers", "--use_scale_shift_norm"),
    ("qkv", "--attention_resolutions, --num_heads or --num_head_channels"),
    ("proj_out", "--attention_resolutions"),
    ("skip_connection", "--num_channels or --channel_mult"),
    ("time_embed", "--num_channels"),
    ("input_blocks.0.", "--num_channels"),
    (".op.", "--resblock_updown"),
    ("in_layers", "--num_res_blocks, --channel_mult, --image_size or --resblock_updown"),
)


def likely_flag(key: str) -> str:
    """The flag that most likely explains why `key` differs between a checkpoint and its flags."""
    for part, flag in _KEY_FLAGS:
        if part in key:
            return flag
    return "--num_channels, --num_res_blocks, --channel_mult and --image_size"


# --------------------------------------------------------------------------------------------- reading and building


@dataclass
class Conversion:
    """A converted checkpoint: the pipeline and what its model card says about where it came from."""

    pipeline: Any
    model: OpenAIModel
    checkpoint_sha256: str
    notes: list[str]

    def card_facts(self) -> dict[str, Any]:
        """Source, flags, checkpoint hash and licence, for the model card."""
        return {
            "source": self.model.source,
            "flags": " ".join(f"--{name} {value}" for name, value in self.model.flags.items()),
            "checkpoint_sha256": self.checkpoint_sha256,
            "timestep_respacing": self.model.flags["timestep_respacing"] or None,
        }


def from_openai(checkpoint: str | Path, flags: str, source: str = "improved-diffusion") -> Any:
    """A `DDPMPlusPipeline` from an improved-diffusion or guided-diffusion checkpoint and its flags.

    Args:
        checkpoint: the `.pt` state dict, read with `torch.load(weights_only=True)` (no pickle code runs).
        flags: the model and diffusion flags that the upstream README prints with the checkpoint, e.g.
            `"--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True --dropout 0.3
            --diffusion_steps 4000 --noise_schedule cosine"`, read with the source's defaults.
        source: "improved-diffusion" or "guided-diffusion".

    Raises `ConversionError` (a `ValueError`) with one line when the model cannot be represented or the checkpoint
    does not fit the flags.
    """
    return convert_checkpoint(checkpoint, flags, source).pipeline


def convert_checkpoint(checkpoint: str | Path, flags: str, source: str) -> Conversion:
    """`from_openai` with the conversion's details (`Conversion`)."""
    from diffusers import UNet2DModel

    from ddpm_plus.pipeline_ddpm_plus import DDPMPlusPipeline
    from ddpm_plus.scheduling_ddpm_plus import DDPMPlusScheduler

    model, notes = describe_model(flags, source)
    state_dict = load_checkpoint(checkpoint)
    _check_diffusion_model(state_dict)
    unet = UNet2DModel(**unet_config(model))
    weights = convert_state_dict(state_dict, model)
    _check_shapes(weights, unet.state_dict(), model)
    unet.load_state_dict(weights, strict=True)
    pipeline = DDPMPlusPipeline(unet=unet.eval(), scheduler=DDPMPlusScheduler(**scheduler_config(model)))
    return Conversion(pipeline, model, file_sha256(Path(checkpoint)), notes)


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a `.pt` file, read without running pickle code; refused in one line unless it is a
    non-empty mapping of names to finite floating-point tensors."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"the checkpoint {path} is not a file.")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error):  # torch's safe unpickler met a class or function to import
            raise ConversionError(
                f"{path} needs code to load (it pickles objects, not only tensors); only state dicts are read, and "
                "no pickle code is run."
            ) from None
        raise ConversionError(f"{path} is not a PyTorch checkpoint (it does not unpickle).") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConversionError(f"{path} is not a PyTorch checkpoint ({reason}).") from None
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise ConversionError(f"{path} holds a {type(state_dict).__name__}, not a state dict of weights.")
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise ConversionError(
                f"{path} is not a flat state dict: {key!r} holds a {type(value).__name__}, not a tensor "
                "(save model.state_dict() itself)."
            )
        if not value.is_floating_point():
            raise ConversionError(f"{path}: weight {key} has dtype {value.dtype}, not a floating-point type.")
        if not torch.isfinite(value).all():
            raise ConversionError(f"{path}: weight {key} holds NaN or infinite values.")
    return dict(state_dict)


def _check_diffusion_model(state_dict: Mapping[str, torch.Tensor]) -> None:
    """Refuse the upstream checkpoints that are not diffusion UNets: classifiers and upsamplers."""
    if not any(key.startswith("output_blocks.") for key in state_dict):
        raise ConversionError(
            "the checkpoint has no output_blocks: it is a noisy-image classifier (EncoderUNetModel), not a diffusion "
            "model; classifier checkpoints are not supported."
        )
    first_conv = state_dict.get("input_blocks.0.0.weight")
    if first_conv is not None and first_conv.ndim == 4 and first_conv.shape[1] != 3:
        raise ConversionError(
            f"the first convolution takes {first_conv.shape[1]} channels, not 3: an upsampler (super-resolution) "
            "model conditioned on a low-resolution image, which UNet2DModel does not take; upsamplers are not "
            "supported."
        )


def _check_shapes(
    weights: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], model: OpenAIModel
) -> None:
    """Refuse a checkpoint whose weights do not fill the network that the flags describe, naming the first
    weight that differs, as an upstream key, and the flag that likely differs."""
    upstream_of = _upstream_names(model)
    unexpected = [key for key in weights if key not in expected]
    if unexpected:
        name = upstream_of(unexpected[0])
        raise ConversionError(f"the checkpoint has {name}, which the flags do not give; check {likely_flag(name)}.")
    for key, target in expected.items():
        if key not in weights:
            name = upstream_of(key)
            raise ConversionError(f"the checkpoint lacks {name}, which the flags ask for; check {likely_flag(name)}.")
        if weights[key].shape != target.shape:
            name = upstream_of(key)
            raise ConversionError(
                f"{name} has shape {tuple(weights[key].shape)} in the checkpoint, but the flags give "
                f"{tuple(target.shape)}; check {likely_flag(name)}."
            )


def _upstream_names(model: OpenAIModel):
    """A function from a diffusers weight name to the upstream name it comes from (its block's, for qkv)."""
    prefixes = [(diffusers, upstream, kind) for upstream, diffusers, kind in block_plan(model)]

    def upstream_name(key: str) -> str:
        for diffusers, upstream, kind in prefixes:
            if key.startswith(diffusers + "."):
                name = key[len(diffusers) + 1 :]
                if kind == "attention" and name.split(".")[0] in ("to_q", "to_k", "to_v"):
                    return f"{upstream}.qkv.{name.split('.')[-1]}"
                inverse = {value: name for name, value in _BLOCK_NAMES[kind].items()}
                for diffusers_part, upstream_part in inverse.items():
                    if diffusers_part and name.startswith(diffusers_part + "."):
                        return f"{upstream}.{upstream_part}{name[len(diffusers_part) :]}"
                return f"{upstream}.{name}"
        return key

    return upstream_name


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_conversion(conversion: Conversion, out: str | Path) -> None:
    """Write the pipeline folder (safetensors, configs, shipped code) and its model card to `out`, atomically: a
    temporary folder beside it takes its place when complete, so a failure (a full disk) leaves `out` as it was."""
    from ddpm_plus.model_card import write_model_card

    out = Path(out)
    with atomic_directory(out) as temporary:
        conversion.pipeline.save_pretrained(temporary)
        write_model_card(temporary, repo_id=str(out), license=UPSTREAM_LICENSE, conversion=conversion.card_facts())
