"""Stochasticity-controlled sampling (the reverse SDE with a free noise level c = η b, docs/math.md, "The SDE view")."""

import inspect
import math

import pytest
import torch
from gaussian_reference import exact_sampler_moments, optimal_epsilon

from ddpm_plus import DDPMPlusScheduler

M, S = 0.1, 0.3  # data x_0 ~ N(M, S²) per dimension


def sample_gaussian_data(eta: float, steps: int, n: int, seed: int = 0) -> torch.Tensor:
    scheduler = DDPMPlusScheduler(clip_sample=False)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 1, 1, generator=generator, dtype=torch.float64)
    for t in scheduler.timesteps:
        x = scheduler.step(
            optimal_epsilon(scheduler.alphas_cumprod[t].item(), x, M, S**2),
            t,
            x,
            generator=generator,
            stochasticity=eta,
        ).prev_sample
    return x.flatten()


def test_step_has_no_eta_argument():
    """Stable Diffusion pipelines pass eta=0.0 to any step() that accepts it; our knob has another name."""
    assert "eta" not in inspect.signature(DDPMPlusScheduler.step).parameters


def test_zero_stochasticity_is_deterministic():
    scheduler = DDPMPlusScheduler()
    scheduler.set_timesteps(20)
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    results = []
    for seed in (1, 2):
        generator, x = torch.Generator().manual_seed(seed), x_T
        for t in scheduler.timesteps:
            x = scheduler.step(0.5 * x, t, x, generator=generator, stochasticity=0.0).prev_sample
        results.append(x)
        assert torch.equal(generator.get_state(), torch.Generator().manual_seed(seed).get_state())  # no draws
    assert torch.equal(results[0], results[1])


def test_full_stochasticity_is_ancestral_sampling():
    """η = 1 with fixed_small is the DDPM step (mathematically; float32 coefficients, hence 1e-5)."""
    scheduler = DDPMPlusScheduler(clip_sample=False)
    scheduler.set_timesteps(30)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    for t in scheduler.timesteps[::7]:
        ancestral = scheduler.step(eps, t, x, generator=torch.Generator().manual_seed(5)).prev_sample
        generalized = scheduler.step(eps, t, x, generator=torch.Generator().manual_seed(5), stochasticity=1.0)
        torch.testing.assert_close(generalized.prev_sample, ancestral, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_gaussian_data_moments(eta):
    """Samples match the exact moments of the discrete sampler (within 4 standard errors), and those moments
    approach the data's N(M, S²) as the number of steps grows (the remaining gap is discretization error)."""
    n, steps = 20000, 1000
    x = sample_gaussian_data(eta, steps, n)
    scheduler = DDPMPlusScheduler(clip_sample=False)
    scheduler.set_timesteps(steps)
    mean, var = exact_sampler_moments(scheduler, eta, M, S**2)
    se_mean, se_var = math.sqrt(var / n), var * math.sqrt(2 / (n - 1))
    assert abs(x.mean().item() - mean) < 4 * se_mean
    assert abs(x.var().item() - var) < 4 * se_var
    # data moments within Monte-Carlo error plus the sampler's exact discretization bias
    assert abs(x.mean().item() - M) < 4 * se_mean + abs(mean - M)
    assert abs(x.var().item() - S**2) < 4 * se_var + abs(var - S**2)
    # the discretization bias shrinks with the number of steps and is small at T steps
    gaps = []
    for coarse in (100, 250, 1000):
        scheduler.set_timesteps(coarse)
        gaps.append(abs(exact_sampler_moments(scheduler, eta, M, S**2)[1] / S**2 - 1))
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.03
    assert abs(mean - M) < 1e-3


def test_bad_stochasticity():
    scheduler = DDPMPlusScheduler()
    scheduler.set_timesteps(5)
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match=r"stochasticity must lie in \[0, 1\]"):
        scheduler.step(x, scheduler.timesteps[0], x, stochasticity=-0.1)


def test_pipeline_stochasticity_option():
    """DDPMPlusPipeline(stochasticity=...): the default is the DDPM step, η = 1 with fixed_small is ancestral
    sampling, η = 0 is a different, deterministic map of x_T (the scheduler tests show it draws no noise)."""
    from pipeline_fixtures import SCHEDULER_CONFIG, tiny_unet

    from ddpm_plus import DDPMPlusPipeline

    pipe = DDPMPlusPipeline(unet=tiny_unet(), scheduler=DDPMPlusScheduler(**SCHEDULER_CONFIG, clip_sample=False))
    pipe.set_progress_bar_config(disable=True)

    def run(seed: int, **kwargs) -> torch.Tensor:
        return pipe(batch_size=2, generator=torch.Generator().manual_seed(seed), num_inference_steps=10,
                    output_type="pt", **kwargs).images  # fmt: skip

    assert torch.equal(run(0), run(0, stochasticity=None))
    torch.testing.assert_close(run(0, stochasticity=1.0), run(0), rtol=1e-5, atol=1e-5)
    deterministic = run(0, stochasticity=0.0)
    assert not torch.equal(deterministic, run(0)) and torch.equal(deterministic, run(0, stochasticity=0.0))
