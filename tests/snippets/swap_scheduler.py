"""Swap DDPMPlusScheduler into an existing diffusers pipeline, then save and reload the pipeline."""

import tempfile

import numpy as np
import torch
from diffusers import DDPMPipeline, DDPMScheduler, DiffusionPipeline, UNet2DModel

import ddpm_plus  # noqa: F401  (lets diffusers load pipelines saved with DDPMPlusScheduler)
from ddpm_plus import DDPMPlusScheduler

# Any diffusers pipeline works the same way, e.g. DDPMPipeline.from_pretrained("google/ddpm-cifar10-32");
# a small untrained one is built here so that this runs offline.
torch.manual_seed(0)
unet = UNet2DModel(
    sample_size=8,
    block_out_channels=(16, 32),
    norm_num_groups=8,
    down_block_types=("DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D"),
)
pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler())


def sample(pipeline: DiffusionPipeline) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipeline(batch_size=2, num_inference_steps=10, generator=generator, output_type="np").images


before = sample(pipe)
pipe.scheduler = DDPMPlusScheduler.from_config(pipe.scheduler.config)  # the swap
assert np.array_equal(sample(pipe), before)  # bitwise the same images

with tempfile.TemporaryDirectory() as directory:
    pipe.save_pretrained(directory)
    reloaded = DiffusionPipeline.from_pretrained(directory)
assert isinstance(reloaded.scheduler, DDPMPlusScheduler)
assert np.array_equal(sample(reloaded), before)
print("DDPMPlusScheduler: same images as DDPMScheduler, saved and reloaded.")
