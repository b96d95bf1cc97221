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


SAMPLE = torch.linspace(-1, 1, 4 * 3 * 8 * 8).reshape(4, 3, 8, 8)
TIMESTEPS = torch.tensor([0, 17, 500, 999])


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# Calls outside the API, what diffusers' DDPMScheduler does with each (an exception, or "silent": a result), and
# DDPMPlusScheduler's ValueError. docs/pipelines.md's table of deviations states the same.
INVALID_CALLS = {
    "step at timestep T": (
        lambda s: s.step(SAMPLE, 1000, SAMPLE, generator=_generator()),
        IndexError,
        r"step got timestep 1000; timesteps must lie in 0\.\.999",
    ),
    "step at timestep -1": (
        lambda s: s.step(SAMPLE, -1, SAMPLE, generator=_generator()),
        "silent",
        r"step got timestep -1; timesteps must lie in 0\.\.999",
    ),
    "step with a model output of batch 1": (
        lambda s: s.step(SAMPLE[:1], 500, SAMPLE, generator=_generator()),
        "silent",
        r"model_output of shape \(1, 3, 8, 8\) does not match the batch and spatial shape of sample \(4, 3, 8, 8\)",
    ),
    "step with a model output of another batch": (
        lambda s: s.step(SAMPLE[:2], 500, SAMPLE, generator=_generator()),
        RuntimeError,
        r"model_output of shape \(2, 3, 8, 8\) does not match",
    ),
    "step with a 1x1 model output": (
        lambda s: s.step(SAMPLE[:, :, :1, :1], 500, SAMPLE, generator=_generator()),
        "silent",
        r"model_output of shape \(4, 3, 1, 1\) does not match .*no broadcasting",
    ),
    "step with a model output of 1 channel": (
        lambda s: s.step(SAMPLE[:, :1], 500, SAMPLE, generator=_generator()),
        "silent",
        r"needs a model output with the sample's 3 channels, got 1",
    ),
    "step with a model output of twice the channels": (
        lambda s: s.step(torch.cat([SAMPLE, SAMPLE], 1), 500, SAMPLE, generator=_generator()),
        RuntimeError,
        r"needs a model output with the sample's 3 channels, got 6 \(a learned-variance model needs 'learned_range'\)",
    ),
    "step of learned_range with the sample's channels": (
        lambda s: type(s)(variance_type="learned_range").step(SAMPLE, 500, SAMPLE, generator=_generator()),
        TypeError,
        r"variance_type='learned_range' needs a model output with twice the sample's channels \(6\), got 3",
    ),
    "step with 3 generators for 4 images": (
        lambda s: s.step(SAMPLE, 500, SAMPLE, generator=[_generator() for _ in range(3)]),
        IndexError,
        r"got 3 generators for 4 images; pass one per image",
    ),
    "step with 5 generators for 4 images": (
        lambda s: s.step(SAMPLE, 500, SAMPLE, generator=[_generator() for _ in range(5)]),
        "silent",
        r"got 5 generators for 4 images",
    ),
    "step with an integer sample": (
        lambda s: s.step(SAMPLE, 500, (SAMPLE * 100).long(), generator=_generator()),
        "silent",
        r"sample must be a floating-point tensor, got torch.int64",
    ),
    "step with an integer model output": (
        lambda s: s.step((SAMPLE * 100).long(), 500, SAMPLE, generator=_generator()),
        (NotImplementedError, RuntimeError),  # torch's noise draw: RuntimeError up to torch 2.6 at least
        r"model_output must be a floating-point tensor, got torch.int64",
    ),
    "add_noise at timestep T": (
        lambda s: s.add_noise(SAMPLE, SAMPLE, torch.tensor([0, 1, 2, 1000])),
        IndexError,
        r"timesteps must lie in 0\.\.999, got values in \[0, 1000\]",
    ),
    "add_noise at timestep -1": (
        lambda s: s.add_noise(SAMPLE, SAMPLE, torch.tensor([0, 1, 2, -1])),
        "silent",
        r"timesteps must lie in 0\.\.999, got values in \[-1, 2\]",
    ),
    "add_noise with noise of batch 1": (
        lambda s: s.add_noise(SAMPLE, SAMPLE[:1], TIMESTEPS),
        "silent",
        r"noise of shape \(1, 3, 8, 8\) does not match the shape of original_samples \(4, 3, 8, 8\)",
    ),
    "add_noise with 4 timesteps for 1 image": (
        lambda s: s.add_noise(SAMPLE[:1], SAMPLE[:1], TIMESTEPS),
        "silent",
        r"timesteps must be a scalar or have shape \(1,\), got \(4,\)",
    ),
    "add_noise with 2 timesteps for 4 images": (
        lambda s: s.add_noise(SAMPLE, SAMPLE, TIMESTEPS[:2]),
        RuntimeError,
        r"timesteps must be a scalar or have shape \(4,\), got \(2,\)",
    ),
    "add_noise with integer samples": (
        lambda s: s.add_noise((SAMPLE * 100).long(), SAMPLE, TIMESTEPS),
        "silent",
        r"original_samples must be a floating-point tensor, got torch.int64",
    ),
    "add_noise with integer noise": (
        lambda s: s.add_noise(SAMPLE, (SAMPLE * 100).long(), TIMESTEPS),
        "silent",
        r"noise must be a floating-point tensor, got torch.int64",
    ),
}


@pytest.mark.parametrize("name", INVALID_CALLS)
def test_step_and_add_noise_refuse_what_q_sample_refuses(name):
    call, _, message = INVALID_CALLS[name]
    with pytest.raises(ValueError, match=message):
        call(DDPMPlusScheduler())


@pytest.mark.parametrize("name", INVALID_CALLS)
def test_diffusers_does_what_the_deviations_table_says(name):
    call, outcome, _ = INVALID_CALLS[name]
    if outcome == "silent":
        assert call(DDPMScheduler()) is not None  # a result, without an error
    else:
        with pytest.raises(outcome):
            call(DDPMScheduler())


def test_q_sample_refuses_noise_that_would_broadcast_and_integer_images():
    scheduler = DDPMPlusScheduler()
    with pytest.raises(ValueError, match=r"noise of shape \(1, 3, 8, 8\) does not match the shape of x0"):
        scheduler.q_sample(SAMPLE, SAMPLE[:1], TIMESTEPS)
    with pytest.raises(ValueError, match="x0 must be a floating-point tensor"):
        scheduler.q_sample((SAMPLE * 100).long(), SAMPLE, TIMESTEPS)


@pytest.mark.parametrize(
    "config", [{"variance_type": "nonsense"}, {"prediction_type": "nonsense"}, {"beta_schedule": "nonsense"}]
)
def test_unknown_settings_are_refused_where_diffusers_builds_or_raises_later(config):
    with pytest.raises(ValueError, match=rf"Unknown {next(iter(config))} 'nonsense'; valid choices are"):
        DDPMPlusScheduler(**config)


def test_diffusers_reads_an_unknown_variance_type_as_fixed_small_and_refuses_a_prediction_type_at_step():
    steps = [
        DDPMScheduler(**config).step(SAMPLE, 500, SAMPLE, generator=_generator()).prev_sample
        for config in ({"variance_type": "nonsense"}, {"variance_type": "fixed_small"})
    ]
    assert torch.equal(*steps)
    with pytest.raises(ValueError, match="prediction_type given as nonsense"):
        DDPMScheduler(prediction_type="nonsense").step(SAMPLE, 500, SAMPLE, generator=_generator())
    with pytest.raises(NotImplementedError):
        DDPMScheduler(beta_schedule="nonsense")


def test_diffusers_valid_calls_stay_bitwise_identical():
    """A 0-dim tensor timestep, a one-generator list, and timesteps of shape (B, 1) or one for all."""
    ours, theirs = DDPMPlusScheduler(), DDPMScheduler()
    for timestep, generator in ((torch.tensor(500), _generator), (500, lambda: [_generator()])):
        results = [s.step(SAMPLE, timestep, SAMPLE, generator=generator()).prev_sample for s in (ours, theirs)]
        assert torch.equal(*results)
    for timesteps in (TIMESTEPS[:, None], torch.tensor([17]), torch.tensor(17)):
        assert torch.equal(ours.add_noise(SAMPLE, -SAMPLE, timesteps), theirs.add_noise(SAMPLE, -SAMPLE, timesteps))
        assert torch.equal(
            ours.get_velocity(SAMPLE, -SAMPLE, timesteps), theirs.get_velocity(SAMPLE, -SAMPLE, timesteps)
        )
