"""Timestep samplers: distributions, importance weights, unbiasedness and resumable state."""

import math

import numpy as np
import pytest
import torch

from ddpm_plus import LossSecondMomentResampler, UniformSampler, create_timestep_sampler


def test_uniform_sampler_draws_all_timesteps_with_unit_weights():
    sampler = UniformSampler(10)
    t, w = sampler.sample(5000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.min() == 0 and t.max() == 9
    assert torch.equal(w, torch.ones(5000))
    counts = torch.bincount(t, minlength=10).double()
    # each count is Binomial(5000, 0.1): mean 500, sd 21.2
    assert (counts - 500).abs().max() < 5 * math.sqrt(5000 * 0.1 * 0.9)


def fill(sampler: LossSecondMomentResampler, losses_per_t: np.ndarray) -> None:
    for _ in range(sampler.history_per_term):
        t = torch.arange(sampler.num_timesteps)
        sampler.update_with_losses(t, torch.from_numpy(losses_per_t))


def test_second_moment_sampler_is_uniform_until_warm():
    sampler = LossSecondMomentResampler(4, history_per_term=3)
    sampler.update_with_losses(torch.tensor([0, 1, 2]), torch.tensor([1.0, 2.0, 3.0]))
    assert not sampler.warmed_up()
    np.testing.assert_array_equal(sampler.probabilities(), np.full(4, 0.25))


def test_second_moment_probabilities_and_history_window():
    sampler = LossSecondMomentResampler(3, history_per_term=2, uniform_prob=0.1)
    sampler.update_with_losses(torch.tensor([0, 0, 0]), torch.tensor([100.0, 3.0, 4.0]))  # oldest (100) drops out
    sampler.update_with_losses(torch.tensor([1, 1, 2, 2]), torch.tensor([1.0, 1.0, 0.0, 2.0]))
    rms = np.array([math.sqrt((9 + 16) / 2), 1.0, math.sqrt(2.0)])
    expected = 0.9 * rms / rms.sum() + 0.1 / 3
    np.testing.assert_allclose(sampler.probabilities(), expected, rtol=1e-12)


def test_importance_weighted_estimate_is_unbiased():
    """E_{t~p}[f(t) / (T p_t)] = (1/T) Σ_t f(t): checked by Monte Carlo within 4 standard errors."""
    T = 20
    f = np.linspace(0.1, 5.0, T) ** 2
    sampler = LossSecondMomentResampler(T, history_per_term=1)
    fill(sampler, np.sqrt(f))
    t, w = sampler.sample(200_000, generator=torch.Generator().manual_seed(0))
    values = torch.from_numpy(f)[t] * w.double()
    stderr = values.std().item() / math.sqrt(values.numel())
    assert abs(values.mean().item() - f.mean()) < 4 * stderr
    # and importance sampling lowered the variance of the estimate compared with uniform sampling
    assert values.var().item() < f.var()


def test_state_round_trip_reproduces_draws():
    sampler = LossSecondMomentResampler(5, history_per_term=2)
    fill(sampler, np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    restored = create_timestep_sampler("loss-second-moment", 5, history_per_term=2)
    restored.load_state_dict(sampler.state_dict())
    np.testing.assert_array_equal(restored.probabilities(), sampler.probabilities())
    a = sampler.sample(50, generator=torch.Generator().manual_seed(3))
    b = restored.sample(50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_arguments():
    with pytest.raises(ValueError, match="valid choices are: uniform, loss-second-moment"):
        create_timestep_sampler("cosine", 10)
    with pytest.raises(ValueError, match="NaN"):
        LossSecondMomentResampler(3).update_with_losses(torch.tensor([0]), torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="100 timesteps"):
        UniformSampler(10).load_state_dict(UniformSampler(100).state_dict())
