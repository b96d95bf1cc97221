"""The probability-flow ODE: the continuous-time schedule, the score, and the log-likelihood on Gaussian data, checked
against float64 references written here (scipy's PCHIP for ᾱ(s), closed-form Gaussian densities and flows)."""

import math

import numpy as np
import pytest
import torch
from pipeline_fixtures import tiny_unet
from scipy.interpolate import PchipInterpolator

from ddpm_plus.likelihood import prepare_evaluation
from ddpm_plus.probability_flow import (
    ContinuousSchedule,
    FlowModel,
    epsilon_prediction,
    ode_likelihood,
    solve_flow,
)
from ddpm_plus.scheduling_ddpm_plus import BETA_SCHEDULES, DDPMPlusScheduler

SHORT_CHAIN = {"num_train_timesteps": 20, "beta_start": 0.01, "beta_end": 0.25}
BIN = 2 / 255


def reference_log_alpha_bar(config: dict) -> PchipInterpolator:
    """log ᾱ(s): scipy's monotone cubic interpolant of log Π(1 - β) at the integer timesteps (linear betas)."""
    betas = np.linspace(config["beta_start"], config["beta_end"], config["num_train_timesteps"])
    return PchipInterpolator(np.arange(len(betas)), np.cumsum(np.log1p(-betas)))


# --------------------------------------------------------------------------------------- the continuous schedule


@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_continuous_schedule_meets_the_discrete_one_and_its_beta_is_the_log_derivative(beta_schedule):
    scheduler = DDPMPlusScheduler(beta_schedule=beta_schedule)
    schedule = ContinuousSchedule.from_scheduler(scheduler)
    integers = torch.arange(1000, dtype=torch.float64)
    # the float64 tables at the integers, and diffusers' float32 table to its accumulated rounding
    assert torch.allclose(schedule.alpha_bar(integers), scheduler.alphas_cumprod_f64, rtol=1e-12, atol=0)
    assert torch.allclose(schedule.alpha_bar(integers), scheduler.alphas_cumprod.double(), rtol=1e-4, atol=0)
    reference = PchipInterpolator(np.arange(1000), np.log(scheduler.alphas_cumprod_f64.numpy()))
    s = torch.rand(4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 999
    np.testing.assert_allclose(schedule.log_alpha_bar(s).numpy(), reference(s.numpy()), rtol=1e-12, atol=1e-14)
    beta = schedule.beta(s).numpy()
    np.testing.assert_allclose(beta, -reference.derivative()(s.numpy()), rtol=1e-10, atol=1e-14)
    step = 1e-6  # β(s) = -d log ᾱ/ds by central differences
    difference = (schedule.log_alpha_bar(s.clamp(step, 999 - step) + step) - schedule.log_alpha_bar(s - step)) / 2
    np.testing.assert_allclose(-difference.numpy() / step, schedule.beta(s.clamp(step, 999 - step)), rtol=1e-5)
    assert beta.min() > 0
    np.testing.assert_allclose(schedule.sigma(s) ** 2, 1 - np.exp(reference(s.numpy())), rtol=1e-10)


def test_continuous_schedule_refuses_zero_terminal_snr_and_times_outside_the_chain():
    with pytest.raises(ValueError, match="ᾱ > 0 at the last timestep"):
        ContinuousSchedule.from_scheduler(DDPMPlusScheduler(rescale_betas_zero_snr=True))
    schedule = ContinuousSchedule.from_scheduler(DDPMPlusScheduler(**SHORT_CHAIN))
    with pytest.raises(ValueError, match=r"s must lie in \[0, 19\]"):
        schedule.beta(torch.tensor([19.5]))


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_epsilon_from_each_prediction_type(prediction_type):
    generator = torch.Generator().manual_seed(1)
    x0, epsilon = torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64).unbind(0)
    alpha_bar = torch.tensor(0.37, dtype=torch.float64)
    x = math.sqrt(0.37) * x0 + math.sqrt(0.63) * epsilon
    output = {"epsilon": epsilon, "sample": x0, "v_prediction": math.sqrt(0.37) * epsilon - math.sqrt(0.63) * x0}
    recovered = epsilon_prediction(output[prediction_type][None], x[None], alpha_bar, prediction_type)
    np.testing.assert_allclose(recovered[0].numpy(), epsilon.numpy(), atol=1e-12)


# --------------------------------------------------------------------------------------- Gaussian data


class GaussianScore(torch.nn.Module):
    """The Bayes-optimal ε̂(x, s) for data N(mean, var) per dimension at the fractional timestep s, with ᾱ(s) from
    `reference_log_alpha_bar`: ε* = √(1-ᾱ)(x - √ᾱ mean) / (ᾱ var + 1 - ᾱ). `scale` multiplies it (a wrong score)."""

    def __init__(self, config: dict, mean: torch.Tensor, var: torch.Tensor, scale: float = 1.0):
        super().__init__()
        self.log_alpha_bar = reference_log_alpha_bar(config)
        self.register_buffer("mean", mean.double())
        self.register_buffer("var", var.double())
        self.scale = scale

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        ab = torch.from_numpy(np.exp(self.log_alpha_bar(s.double().cpu().numpy()))).reshape(-1, 1, 1, 1)
        return self.scale * (1 - ab).sqrt() * (x - ab.sqrt() * self.mean) / (ab * self.var + 1 - ab)


class GaussianFlow:
    """Closed forms for data N(mean, var): the marginal at s is N(√ᾱ(s) mean, ᾱ(s) var + 1 - ᾱ(s)), and the flow
    maps x at s = 0 to x_end = m_end + √(v_end / v_0)(x - m_0), an affine map per dimension."""

    def __init__(self, config: dict, mean: torch.Tensor, var: torch.Tensor):
        log_alpha_bar = reference_log_alpha_bar(config)
        ab0, ab_end = math.exp(log_alpha_bar(0.0)), math.exp(log_alpha_bar(config["num_train_timesteps"] - 1.0))
        self.m0, self.v0 = ab0**0.5 * mean.double(), ab0 * var.double() + 1 - ab0
        self.m_end, self.v_end = ab_end**0.5 * mean.double(), ab_end * var.double() + 1 - ab_end
        self.gain = (self.v_end / self.v0).sqrt()

    def end_point(self, x: torch.Tensor) -> torch.Tensor:
        return self.m_end + self.gain * (x - self.m0)

    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        """The ODE's log p_0(x) with the prior N(0, I) at s = T-1: log N(x; m_0, v_0) + log N(x_end; 0, 1) -
        log N(x_end; m_end, v_end), per image (nats)."""
        end = self.end_point(x)
        prior_mismatch = log_normal(end, 0, 1) - log_normal(end, self.m_end, self.v_end)
        return image_sum(log_normal(x, self.m0, self.v0) + prior_mismatch)

    def dequantized_bpd(self, images: torch.Tensor) -> torch.Tensor:
        """E_u[-log p_0(x + Δ(u - ½))] in bits/dim plus log₂(1/Δ): the log density is a quadratic c₂x² + ... per
        dimension, so the expectation adds c₂ Δ²/12."""
        curvature = -0.5 / self.v0 - 0.5 * self.gain**2 + 0.5 * self.gain**2 / self.v_end
        expected = self.log_density(images.double()) + image_sum(curvature.expand_as(images) * BIN**2 / 12)
        dims = images[0].numel()
        return -expected / (dims * math.log(2)) + math.log2(1 / BIN)


def log_normal(x, mean, var):
    return -0.5 * (x - mean) ** 2 / var - 0.5 * torch.log(2 * math.pi * torch.as_tensor(var, dtype=torch.float64))


def image_sum(values: torch.Tensor) -> torch.Tensor:
    return values.flatten(1).sum(1)


MEAN = torch.tensor([0.3, -0.2, 0.1, 0.0, -0.5, 0.4, 0.2, -0.1]).reshape(1, 2, 2, 2)
VAR = torch.tensor([0.25, 0.5, 0.1, 0.8, 0.3, 0.05, 0.6, 0.2]).reshape(1, 2, 2, 2)


class ScaledBeta(ContinuousSchedule):
    """A schedule whose β(s) is off by a factor (a wrong time change of the ODE)."""

    factor = 1.01

    def beta(self, s):
        return self.factor * super().beta(s)


def gaussian_flow_model(config: dict, score_scale: float = 1.0, beta_error: bool = False) -> FlowModel:
    scheduler = DDPMPlusScheduler(**config)
    model = GaussianScore(config, MEAN, VAR, scale=score_scale)
    network, scheduler, _ = prepare_evaluation(model, scheduler, MEAN, None, 1)
    schedule = ContinuousSchedule.from_scheduler(scheduler)
    if beta_error:
        schedule = ScaledBeta(schedule.log_alpha_bar_nodes, schedule.slopes)
    return FlowModel(network, schedule, "epsilon")


@pytest.mark.parametrize("config", [{"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}, SHORT_CHAIN])
def test_gaussian_ode_log_density_is_exact_and_catches_a_one_percent_error(config):
    x = torch.randn(6, 2, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * VAR.sqrt() + MEAN
    reference = GaussianFlow(config, MEAN, VAR)
    expected = reference.log_density(x)
    tolerance = 1e-8
    solution = solve_flow(gaussian_flow_model(config), x, None, rtol=tolerance, atol=tolerance)
    error = (solution.log_density - expected).abs().max().item()
    # the solver's error per image shrinks with its tolerance (the 20-step chain's kinked schedule needs the most
    # steps): at 1e-8 it stays within a few thousand times the tolerance, under 1e-4 nats here
    assert error < 1e-4
    np.testing.assert_allclose(solution.noise, reference.end_point(x), atol=1e-4)
    for wrong in (gaussian_flow_model(config, score_scale=1.01), gaussian_flow_model(config, beta_error=True)):
        wrong_error = (solve_flow(wrong, x, None, tolerance, tolerance).log_density - expected).abs().max().item()
        assert wrong_error > 100 * error and wrong_error > 0.01


def gaussian_images(count: int, seed: int) -> torch.Tensor:
    """8-bit images drawn near N(MEAN, VAR), on the grid k/127.5 - 1."""
    x = torch.randn(count, 2, 2, 2, generator=torch.Generator().manual_seed(seed)) * VAR.sqrt() + MEAN
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def ode_bpd(config: dict, images: torch.Tensor, **kwargs):
    scheduler = DDPMPlusScheduler(**config)
    model = GaussianScore(config, MEAN, VAR, scale=kwargs.pop("score_scale", 1.0))
    generator = torch.Generator().manual_seed(3)
    return ode_likelihood(model, images, scheduler, generator=generator, progress=False, **kwargs)


@pytest.mark.parametrize("divergence", ["exact", "gaussian", "rademacher"])
def test_dequantized_gaussian_bpd_matches_the_closed_form_within_its_standard_error(divergence):
    images = gaussian_images(4, seed=1)
    settings = {"num_draws": 64, "divergence": divergence, "rtol": 1e-6, "atol": 1e-6, "max_batch_size": 256}
    result = ode_bpd(SHORT_CHAIN, images, **settings)
    expected = GaussianFlow(SHORT_CHAIN, MEAN, VAR).dequantized_bpd(images)
    assert ((result.bits_per_dim - expected) / result.draw_standard_error()).abs().max() < 4
    assert result.draws_bpd.shape == (4, 64) and result.num_evaluations == result.function_evaluations[0] * 4 * 64


def test_hutchinson_log_density_is_within_its_standard_error_and_catches_a_one_percent_score_error():
    """Gaussian probes (Rademacher probes are exact for the diagonal Jacobian of independent dimensions): 512
    copies of one point with 64 probes each; the mean is within 4 standard errors of the closed form, a score off
    by 1 % is more than 8 away (β off by 1 % moves it by about one standard error: the exact test catches that)."""
    config = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
    x = torch.randn(1, 2, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * VAR.sqrt() + MEAN
    expected = GaussianFlow(config, MEAN, VAR).log_density(x).item()
    rows = x.repeat(512, 1, 1, 1)
    probes = torch.randn(64, *rows.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for score_scale, z_range in ((1.0, (0, 4)), (1.01, (8, math.inf))):
        log_density = solve_flow(gaussian_flow_model(config, score_scale), rows, probes, 1e-5, 1e-5).log_density
        z = abs(log_density.mean().item() - expected) / (log_density.std().item() / math.sqrt(len(rows)))
        assert z_range[0] <= z < z_range[1]


# --------------------------------------------------------------------------------------- networks and bad input


def test_a_unet_runs_at_fractional_timesteps_and_counts_its_evaluations():
    unet = tiny_unet()
    images = gaussian_images(3, seed=4)[:, :1].expand(3, 3, 2, 2).repeat(1, 1, 4, 4).contiguous()
    scheduler = DDPMPlusScheduler(**SHORT_CHAIN)
    result = ode_likelihood(
        unet, images, scheduler, num_draws=2, generator=torch.Generator().manual_seed(0), max_batch_size=4
    )
    # 2 images per solve (4 rows), then 1: each solve's evaluations of f times its rows
    evaluations = result.function_evaluations.tolist()
    assert evaluations[0] == evaluations[1] and result.num_evaluations == 4 * evaluations[0] + 2 * evaluations[2]
    assert torch.isfinite(result.draws_bpd).all() and result.path_bpd.shape == (3, 20)
    assert torch.all(result.path_bpd[:, 0] == 0)
    again = ode_likelihood(
        unet, images[2:], scheduler, num_draws=2, generator=[torch.Generator().manual_seed(0)], max_batch_size=4
    )
    keys_of_third = ode_likelihood(
        unet,
        images,
        scheduler,
        num_draws=2,
        generator=[torch.Generator().manual_seed(i) for i in (5, 6, 0)],
        max_batch_size=2,
    )
    assert torch.equal(again.draws_bpd[0], keys_of_third.draws_bpd[2])  # alone in its solve, same key: same draws


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"images": "off the grid"}, "8-bit"),
        ({"rtol": 0.0}, "rtol must be positive"),
        ({"atol": -1e-5}, "atol must be positive"),
        ({"num_probes": 0}, "num_probes must be a positive integer"),
        ({"num_draws": 0}, "num_draws must be a positive integer"),
        ({"divergence": "hutchinson"}, "divergence"),
        ({"prediction_type": "mean"}, "needs a score"),
        ({"time_embedding_type": "learned"}, "learned table of integer timesteps"),
    ],
)
def test_bad_settings_are_one_line_before_any_work(change, message):
    calls = []

    class Counting(torch.nn.Module):
        def forward(self, x, t):
            calls.append(1)
            return torch.zeros_like(x)

    model = Counting()
    if "time_embedding_type" in change:
        model.config = type("Config", (), {"time_embedding_type": change.pop("time_embedding_type")})()
    scheduler = DDPMPlusScheduler(**SHORT_CHAIN, prediction_type=change.pop("prediction_type", "epsilon"))
    images = gaussian_images(2, seed=0)
    if change.pop("images", None):
        images = images.clamp(-0.9, 0.9) + 0.3 / 255
    with pytest.raises(ValueError, match=message) as error:
        ode_likelihood(model, images, scheduler, progress=False, **change)
    assert "\n" not in str(error.value) and not calls
