"""Tiny models and inputs shared by the pipeline, likelihood and Hub tests (milliseconds per network call on a CPU)."""

import numpy as np
import torch
from diffusers import UNet2DModel

SAMPLE_SIZE = 8
CHANNELS = 3
NUM_TRAIN_TIMESTEPS = 20
# A short chain whose betas still reach noise: ᾱ_T ≈ 0.05 with T = 20.
SCHEDULER_CONFIG = {"num_train_timesteps": NUM_TRAIN_TIMESTEPS, "beta_start": 0.01, "beta_end": 0.25}


def tiny_unet(
    learn_sigma: bool = False, channels: int = CHANNELS, dtype: torch.dtype = torch.float32, seed: int = 0
) -> UNet2DModel:
    """A deterministic UNet2DModel of about 11k parameters for 8x8 images (doubled outputs with `learn_sigma`)."""
    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=SAMPLE_SIZE,
        in_channels=channels,
        out_channels=2 * channels if learn_sigma else channels,
        block_out_channels=(4, 8),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    return unet.to(dtype).eval()


def digits_unet() -> UNet2DModel:
    """A deterministic UNet2DModel for the 16x16 grey digits, as the README and docs examples load them."""
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )


def ddpm_unet(in_channels: int = 3, dropout: float = 0.0) -> UNet2DModel:
    """A 16x16 UNet2DModel of 45,259 parameters (3 channels) with the DDPM network's conventions: attention at the
    lower resolution, sinusoidal time embedding without the sin/cos flip. Initialised from torch's global seed."""
    return UNet2DModel(
        sample_size=16,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        dropout=dropout,
        norm_num_groups=4,
        flip_sin_to_cos=False,
        freq_shift=1,
        downsample_padding=0,
        attention_head_dim=None,
        norm_eps=1e-6,
    )


def generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per image."""
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def random_uint8_images(batch_size: int, channels: int = CHANNELS, seed: int = 0) -> np.ndarray:
    """uint8 images (B, H, W, C) that include the edge levels 0 and 255 (the open decoder bins of eq. 13)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(batch_size, SAMPLE_SIZE, SAMPLE_SIZE, channels))
    pixels[:, 0, 0, 0] = 0
    pixels[:, -1, -1, -1] = 255
    return pixels.astype(np.uint8)
