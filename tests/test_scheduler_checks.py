"""DDPMPlusScheduler refuses what cannot be a DDPM schedule with a ValueError naming the settings, where diffusers'
DDPMScheduler builds it silently, and schedules or steps outside the chain with a ValueError naming the valid range,
where diffusers fails with ZeroDivisionError or IndexError (or wraps around). Valid input stays bitwise diffusers'."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from ddpm_plus import DDPMPlusScheduler


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"beta_end": 1.5}, r"0 <= beta_start <= beta_end <= 1; got beta_start=0.0001, beta_end=1.5"),
        ({"beta_start": 0.03, "beta_end": 0.02}, r"got beta_start=0.03, beta_end=0.02"),
        ({"beta_start": -0.01}, r"beta_schedule='linear' runs from beta_start to beta_end.*beta_start=-0.01"),
        ({"beta_schedule": "scaled_linear", "beta_start": -1e-4}, r"beta_schedule='scaled_linear'.*beta_start=-0.0001"),
        ({"beta_schedule": "sigmoid", "beta_end": float("nan")}, r"beta_schedule='sigmoid'.*beta_end=nan"),
        ({"beta_start": 0.0}, r"beta_schedule='linear', beta_start=0.0, .* gives β_0 = 0.0; every β_t must lie in"),
        ({"trained_betas": [0.1, 1.2, 0.3], "num_train_timesteps": 3}, r"trained_betas\[1\] = 1.2"),
        ({"trained_betas": [0.1, -0.2, 0.0], "num_train_timesteps": 3}, r"trained_betas\[1\] = -0.2 \(2 value"),
        ({"trained_betas": [0.1, 0.2], "num_train_timesteps": 3}, r"one beta per timestep \(3 .*got shape \(2,\)"),
        ({"num_train_timesteps": 0}, "num_train_timesteps must be a positive integer, got 0"),
        ({"clip_sample_range": 0.0}, r"clip_sample_range must be positive, got 0.0"),
        ({"clip_sample_range": -1.0, "clip_sample": False}, r"clip_sample_range must be positive, got -1.0"),
        ({"sample_max_value": float("nan")}, r"sample_max_value must be positive, got nan"),
        ({"dynamic_thresholding_ratio": 1.5}, r"dynamic_thresholding_ratio must lie in \(0, 1\], got 1.5"),
    ],
)
def test_invalid_schedules_are_refused_naming_the_settings(config, message):
    with pytest.raises(ValueError, match=message):
        DDPMPlusScheduler(**config)


def test_diffusers_collapses_every_prediction_to_zero_with_a_zero_clip_range():
    """What the clip-range refusal prevents: diffusers clips x̂_0 to [0, 0] silently."""
    sample = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    output = DDPMScheduler(clip_sample_range=0.0).step(sample, 10, sample, generator=torch.Generator().manual_seed(1))
    assert torch.count_nonzero(output.pred_original_sample) == 0


@pytest.mark.parametrize(
    "config",
    [
        {"beta_start": 0.02, "beta_end": 0.02},  # a constant schedule
        {"beta_end": 1.0},  # β_T = 1: the final latent holds no signal
        {"beta_schedule": "sigmoid", "beta_start": 0.0},  # the sigmoid never reaches beta_start
        {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 2},  # capped at 0.999
        {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 4000},
        {"beta_schedule": "laplace", "num_train_timesteps": 3},
        {"rescale_betas_zero_snr": True, "beta_schedule": "scaled_linear"},  # zero terminal SNR: β_T = 1
        {"trained_betas": [1e-4, 0.5, 1.0], "num_train_timesteps": 3},
        {"beta_schedule": "squaredcos_cap_v2", "beta_start": 0.5, "beta_end": 0.1},  # ignored by this schedule
    ],
)
def test_edge_schedules_are_accepted_with_diffusers_tables(config):
    ours, theirs = DDPMPlusScheduler(**config), DDPMScheduler(**config)
    assert torch.equal(ours.betas, theirs.betas) and torch.equal(ours.alphas_cumprod, theirs.alphas_cumprod)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [  # diffusers: ZeroDivisionError, an empty schedule, TypeError, IndexError, a wrap-around to t = 999
        ({"num_inference_steps": 0}, r"num_inference_steps must lie in 1\.\.1000 .*got 0"),
        ({"num_inference_steps": -1}, r"num_inference_steps must lie in 1\.\.1000 .*got -1"),
        ({}, r"Pass num_inference_steps \(1\.\.1000\) or custom timesteps"),
        ({"timesteps": []}, r"non-empty descending list in 0\.\.999, got an empty list"),
        ({"timesteps": [10, 5, -1]}, r"in 0\.\.999, got a timestep -1"),
    ],
)
def test_set_timesteps_refuses_an_empty_or_negative_schedule(kwargs, message):
    scheduler = DDPMPlusScheduler()
    before = scheduler.timesteps.clone()
    with pytest.raises(ValueError, match=message):
        scheduler.set_timesteps(**kwargs)
    assert torch.equal(scheduler.timesteps, before)  # left as it was


def test_step_refuses_a_timestep_outside_the_schedule():
    sample = torch.linspace(-1, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    scheduler = DDPMPlusScheduler()
    for timestep in (1000, -1, torch.tensor(1000)):  # diffusers: IndexError, or t = -1 read as t = 999
        with pytest.raises(ValueError, match=rf"step got timestep {int(timestep)}; timesteps must lie in 0\.\.999"):
            scheduler.step(sample, timestep, sample)
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match=r"timestep 5, which is not in the schedule .*10 timesteps from 900 down to 0"):
        scheduler.step(sample, 5, sample)  # diffusers: IndexError
    reference = DDPMScheduler()
    reference.set_timesteps(10)
    for timestep in scheduler.timesteps[:3]:
        ours = scheduler.step(sample, timestep, sample, generator=torch.Generator().manual_seed(0)).prev_sample
        theirs = reference.step(sample, timestep, sample, generator=torch.Generator().manual_seed(0)).prev_sample
        assert np.array_equal(ours.numpy(), theirs.numpy())
