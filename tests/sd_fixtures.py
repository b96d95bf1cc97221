"""Tiny, randomly initialised Stable Diffusion and DDPM components, built offline for the interop tests.

Nothing here is downloaded: the CLIP tokenizer reads a small byte-level BPE vocabulary (`vocab.json`,
`merges.txt`) written by `write_tokenizer_files`, and every network is a few-thousand-parameter model with
seeded random weights.
"""

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel, UNet2DModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

# The scheduler_config.json of Stable Diffusion v1.x (a PNDMScheduler config, as published with the model).
SD_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

# The scheduler_config.json of Stable Diffusion 2.x at 768 px (a DDIMScheduler config with v-prediction).
SD2_SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

# An outdated SD config: the pipeline constructor rewrites steps_offset to 1 and clip_sample to False.
OUTDATED_SD_SCHEDULER_CONFIG = {**SD_SCHEDULER_CONFIG, "steps_offset": 0, "clip_sample": True}

PROMPT_MAX_LENGTH = 16
_TOKENIZER_WORDS = ("a", "photo", "of", "cat", "dog", "painting", "red", "blue", "house", "tree", "in", "the", "snow")
_START_TOKEN = "<|startoftext|>"
_END_TOKEN = "<|endoftext|>"


def write_tokenizer_files(directory: Path) -> Path:
    """Write a small CLIP byte-level BPE vocabulary (`vocab.json`, `merges.txt`) into `directory`.

    The vocabulary holds every printable ASCII character, alone and as a word end (`"x</w>"`), the merges that
    spell each word of `_TOKENIZER_WORDS` from left to right, and CLIP's two special tokens (last, as in CLIP).
    """
    characters = [chr(code) for code in range(ord("!"), ord("~") + 1)]
    tokens = characters + [character + "</w>" for character in characters]
    merges: list[str] = []
    for word in _TOKENIZER_WORDS:
        pieces = [*word[:-1], word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            rule = f"{merged} {piece}"
            merged += piece
            if rule not in merges:
                merges.append(rule)
                tokens.append(merged)
    tokens += [_START_TOKEN, _END_TOKEN]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return directory


def tiny_tokenizer(directory: Path) -> CLIPTokenizer:
    """A `CLIPTokenizer` read from the vocabulary files written into `directory`."""
    return CLIPTokenizer.from_pretrained(write_tokenizer_files(directory), model_max_length=PROMPT_MAX_LENGTH)


def tiny_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A 2-layer, 32-wide CLIP text encoder over the tokenizer's vocabulary."""
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=PROMPT_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config).eval()


def tiny_sd_unet() -> UNet2DConditionModel:
    """A conditional UNet on 4-channel 8x8 latents with 32-dim cross-attention."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    ).eval()


def tiny_vae() -> AutoencoderKL:
    """An `AutoencoderKL` with one downsampling: 16x16 RGB images <-> 4-channel 8x8 latents."""
    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=16,
    ).eval()


def tiny_sd_components(tokenizer_directory: Path) -> dict:
    """Every component of a `StableDiffusionPipeline` except the scheduler, without safety checker."""
    tokenizer = tiny_tokenizer(tokenizer_directory)
    return {
        "vae": tiny_vae(),
        "text_encoder": tiny_text_encoder(tokenizer),
        "tokenizer": tokenizer,
        "unet": tiny_sd_unet(),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def tiny_sd_pipeline(
    tokenizer_directory: Path, scheduler_config: dict = SD_SCHEDULER_CONFIG
) -> StableDiffusionPipeline:
    """A tiny `StableDiffusionPipeline` with diffusers' `DDPMScheduler` built from an SD scheduler config."""
    scheduler = DDPMScheduler.from_config(scheduler_config)
    pipe = StableDiffusionPipeline(**tiny_sd_components(tokenizer_directory), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_ddpm_unet(learn_sigma: bool = False) -> UNet2DModel:
    """An unconditional 3-channel 8x8 `UNet2DModel`; with `learn_sigma` it outputs 6 channels (mean and variance)."""
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=6 if learn_sigma else 3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ).eval()
