"""The likelihood engine against float64 references written here from docs/math.md (not from the code under test)."""

import json
import math
from types import SimpleNamespace

import mpmath
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from keyed_noise import documented_noise, seeded_noise_keys
from numpy.polynomial.hermite_e import hermegauss
from PIL import Image
from pipeline_fixtures import ddpm_unet
from tanh_decoder import tanh_decoder_nll

from ddpm_plus.bound_estimation import (
    BoundEstimate,
    estimate_bound,
    evaluate_terms,
    make_strata,
    pilot_profile,
    student_t_quantile,
)
from ddpm_plus.likelihood import BoundResult, variational_bound
from ddpm_plus.scheduling_ddpm_plus import DDPMPlusScheduler, discretized_gaussian_log_likelihood

LN2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------------------------
# Float64 references (0-based t: index t is the paper's t + 1; ᾱ_{-1} = 1)
# ---------------------------------------------------------------------------------------------------------------


class Chain:
    """The forward process and posterior of docs/math.md for a linear schedule, in numpy float64."""

    def __init__(self, num_steps: int):
        self.betas = np.linspace(1e-4, 0.02, num_steps)
        self.abar = np.cumprod(1.0 - self.betas)
        self.abar_prev = np.append(1.0, self.abar[:-1])
        self.post_var = self.betas * (1.0 - self.abar_prev) / (1.0 - self.abar)  # β̃_t (eq. 7)
        self.post_logvar = np.log(np.append(self.post_var[1], self.post_var[1:]))  # log β̃, clipped at t = 0
        self.large_logvar = np.log(np.append(self.post_var[1], self.betas[1:]))  # log β_t, β̃_1 at t = 0
        self.c_x0 = np.sqrt(self.abar_prev) * self.betas / (1.0 - self.abar)  # μ̃ coefficients (eq. 7)
        self.c_xt = np.sqrt(1.0 - self.betas) * (1.0 - self.abar_prev) / (1.0 - self.abar)


def gauss_kl(m1, lv1, m2, lv2):
    return 0.5 * (-1.0 + lv2 - lv1 + np.exp(lv1 - lv2) + (m1 - m2) ** 2 * np.exp(-lv2))


def mp_bin_nll(x: float, mean: float, sigma: float) -> float:
    """-log P(bin of x) under N(mean, sigma²), 40 digits; edge bins open (eq. 13)."""
    mpmath.mp.dps = 40
    x, mean, sigma = mpmath.mpf(x), mpmath.mpf(mean), mpmath.mpf(sigma)
    upper = mpmath.ncdf((x + mpmath.mpf(1) / 255 - mean) / sigma) if x < 0.999 else mpmath.mpf(1)
    lower = mpmath.ncdf((x - mpmath.mpf(1) / 255 - mean) / sigma) if x > -0.999 else mpmath.mpf(0)
    return float(-mpmath.log(upper - lower))


def prior_nats(chain: Chain, x0: np.ndarray) -> np.ndarray:
    """KL(N(√ᾱ_T x_0, 1 - ᾱ_T) ‖ N(0, 1)) per element."""
    ab = chain.abar[-1]
    return gauss_kl(np.sqrt(ab) * x0, np.log1p(-ab), 0.0, 0.0)


def per_image(values: np.ndarray) -> np.ndarray:
    return values.reshape(values.shape[0], -1).mean(1)


def eight_bit_images(shape, seed: int, low: int = 0, high: int = 256) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, shape, generator=generator).double() / 127.5 - 1


class ToyEpsilon(torch.nn.Module):
    """ε̂(x_t, t) = a(t) · x_t in float64 (a module with float64 buffers, so the engine feeds float64 inputs)."""

    def __init__(self, chain: Chain):
        super().__init__()
        t = np.arange(len(chain.betas))
        self.register_buffer("a", torch.from_numpy(np.sqrt(1 - chain.abar) * (1 + 0.2 * np.sin(t))))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.a[t].view(-1, 1, 1, 1) * x_t


def reference_bound(chain: Chain, model: ToyEpsilon, x0: np.ndarray, seed: int, variance_type: str):
    """calc_bpd_loop from the formulas: for every t one draw of the documented noise, then eq. 4-13."""
    keys = seeded_noise_keys(seed, x0.shape[0])
    num_steps = len(chain.betas)
    terms, x0_mse = np.zeros((x0.shape[0], num_steps)), np.zeros((x0.shape[0], num_steps))
    a = model.a.numpy()
    model_logvar = chain.post_logvar if variance_type == "fixed_small" else chain.large_logvar
    for t in reversed(range(num_steps)):
        noise = np.stack([documented_noise(key, t, x0.shape[1:]) for key in keys])
        x_t = np.sqrt(chain.abar[t]) * x0 + np.sqrt(1 - chain.abar[t]) * noise
        x0_hat = (x_t - np.sqrt(1 - chain.abar[t]) * a[t] * x_t) / np.sqrt(chain.abar[t])
        mean = chain.c_x0[t] * x0_hat + chain.c_xt[t] * x_t
        x0_mse[:, t] = per_image((x0_hat - x0) ** 2)
        if t > 0:
            true_mean = chain.c_x0[t] * x0 + chain.c_xt[t] * x_t
            kl = gauss_kl(true_mean, chain.post_logvar[t], mean, model_logvar[t])
            terms[:, t] = per_image(kl) / LN2
        else:
            sigma = math.exp(0.5 * model_logvar[0])
            nll = np.vectorize(mp_bin_nll)(x0, mean, sigma)
            terms[:, 0] = per_image(nll) / LN2
    prior = per_image(prior_nats(chain, x0)) / LN2
    return prior, terms, x0_mse


# ---------------------------------------------------------------------------------------------------------------
# The exact bound
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_exact_bound_matches_float64_reference(variance_type):
    chain = Chain(40)
    model = ToyEpsilon(chain)
    scheduler = DDPMPlusScheduler(num_train_timesteps=40, variance_type=variance_type)
    x0 = eight_bit_images((3, 1, 4, 4), seed=0)
    result = variational_bound(
        model, x0, scheduler, generator=torch.Generator().manual_seed(5), max_batch_size=17, progress=False
    )
    prior, terms, x0_mse = reference_bound(chain, model, x0.numpy(), seed=5, variance_type=variance_type)
    np.testing.assert_allclose(result.terms_bpd.numpy(), terms, rtol=0, atol=1e-10)
    np.testing.assert_allclose(result.prior_bpd.numpy(), prior, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.decoder_bpd.numpy(), terms[:, 0], rtol=0, atol=1e-10)
    np.testing.assert_allclose(result.total_bpd.numpy(), prior + terms.sum(1), rtol=0, atol=1e-10)
    np.testing.assert_allclose(result.x0_mse.numpy(), x0_mse, rtol=1e-12, atol=0)
    assert result.num_evaluations == 3 * 40
    assert result.terms_bpd.dtype == torch.float64


def test_results_do_not_depend_on_the_chunking():
    chain = Chain(30)
    scheduler = DDPMPlusScheduler(num_train_timesteps=30)
    x0 = eight_bit_images((5, 1, 4, 4), seed=2)
    results = [
        variational_bound(
            ToyEpsilon(chain), x0, scheduler, generator=torch.Generator().manual_seed(9), max_batch_size=size
        )
        for size in (1, 7, 64, 10_000)
    ]
    for other in results[1:]:
        assert torch.equal(other.terms_bpd, results[0].terms_bpd)
        assert torch.equal(other.x0_mse, results[0].x0_mse)
        assert torch.equal(other.eps_mse, results[0].eps_mse)

    torch.manual_seed(0)
    unet = ddpm_unet()
    images = eight_bit_images((3, 3, 16, 16), seed=3).float()
    small, large = (
        variational_bound(
            unet,
            images,
            DDPMPlusScheduler(num_train_timesteps=10),
            generator=torch.Generator().manual_seed(1),
            max_batch_size=size,
            progress=False,
        )
        for size in (4, 64)
    )
    torch.testing.assert_close(small.terms_bpd, large.terms_bpd, rtol=1e-5, atol=1e-7)


def test_per_image_generators_make_each_image_independent_of_its_batch():
    chain = Chain(20)
    scheduler = DDPMPlusScheduler(num_train_timesteps=20)
    x0 = eight_bit_images((3, 1, 4, 4), seed=4)
    seeds = [11, 12, 13]
    batch = variational_bound(
        ToyEpsilon(chain), x0, scheduler, generator=[torch.Generator().manual_seed(s) for s in seeds], progress=False
    )
    alone = variational_bound(
        ToyEpsilon(chain), x0[1:2], scheduler, generator=[torch.Generator().manual_seed(12)], progress=False
    )
    assert torch.equal(batch.terms_bpd[1:2], alone.terms_bpd)
    estimates = [
        estimate_bound(
            ToyEpsilon(chain),
            images,
            scheduler,
            num_strata=4,
            generator=[torch.Generator().manual_seed(s) for s in chosen],
            progress=False,
        )
        for images, chosen in ((x0, seeds), (x0[1:2], seeds[1:2]))
    ]
    assert torch.equal(estimates[0].total_bpd[1:2], estimates[1].total_bpd)
    assert torch.equal(estimates[0].decoder_bpd, batch.decoder_bpd)  # same keys: the estimator's noise is the exact's


def test_result_helpers():
    chain = Chain(10)
    scheduler = DDPMPlusScheduler(num_train_timesteps=10)
    x0 = eight_bit_images((4, 1, 2, 2), seed=5)
    result = variational_bound(ToyEpsilon(chain), x0, scheduler, progress=False)
    parts = BoundResult.concat([result_slice(result, slice(0, 1), 10), result_slice(result, slice(1, 4), 10)])
    assert torch.equal(parts.total_bpd, result.total_bpd) and parts.num_evaluations == result.num_evaluations
    rate = result.rate_bpd()
    terms = result.terms_bpd.numpy()
    for t in (0, 1, 5, 9):  # bits received once the reverse process has produced x_t: prior + terms at s > t
        expected = result.prior_bpd.numpy() + terms[:, t + 1 :].sum(1)
        np.testing.assert_allclose(rate[:, t].numpy(), expected, rtol=1e-13)
    assert torch.equal(rate[:, 9], result.prior_bpd)  # x_{T-1} costs the prior only
    expected = result.total_bpd.numpy() - result.decoder_bpd.numpy()  # x_0 is all but the decoder
    np.testing.assert_allclose(rate[:, 0].numpy(), expected, rtol=1e-13)


def result_slice(result: BoundResult, index: slice, num_steps: int) -> BoundResult:
    fields = ("total_bpd", "prior_bpd", "decoder_bpd", "terms_bpd", "x0_mse", "eps_mse")
    parts = {name: getattr(result, name)[index] for name in fields}
    return BoundResult(**parts, num_evaluations=len(parts["total_bpd"]) * num_steps)


# ---------------------------------------------------------------------------------------------------------------
# Closed form: Gaussian data, Bayes-optimal ε and exact reverse variances
# ---------------------------------------------------------------------------------------------------------------


class BayesOptimal(torch.nn.Module):
    """For x_0 ~ N(m, s²): ε*(x_t) = √(1-ᾱ)(x_t - √ᾱ m)/(ᾱs² + 1 - ᾱ) and log Var[x_{t-1} | x_t] ("learned")."""

    def __init__(self, chain: Chain, m: float, s: float):
        super().__init__()
        var_x0 = s**2 * (1 - chain.abar) / (chain.abar * s**2 + 1 - chain.abar)  # Var[x_0 | x_t]
        exact_var = chain.post_var + chain.c_x0**2 * var_x0  # law of total variance
        self.m, self.s = m, s
        self.register_buffer("abar", torch.from_numpy(chain.abar))
        self.register_buffer("logvar", torch.from_numpy(np.log(exact_var)))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.abar[t].view(-1, 1, 1, 1)
        eps = (1 - ab).sqrt() * (x_t - ab.sqrt() * self.m) / (ab * self.s**2 + 1 - ab)
        return torch.cat([eps, self.logvar[t].view(-1, 1, 1, 1).expand_as(x_t)], dim=1)


def test_gaussian_data_bound_minus_nll_is_the_prior_mismatch():
    """x_0 ~ N(m, s²) per dimension (continuous), ε* and σ_t² = Var[x_{t-1}|x_t]: then p_θ(x_{t-1}|x_t) is the true
    reverse conditional q(x_{t-1}|x_t), so p_θ(x_{0:T}) = q(x_{0:T}) N(x_T; 0, I) / q(x_T) and, for every x_0,

        E_ε[L(x_0)] = -log q(x_0) + E_{x_T ~ q(x_T|x_0)}[log q(x_T) - log N(x_T; 0, I)] =: NLL(x_0) + g(x_0),

    whose average over x_0 is KL(q(x_T) ‖ N(0, I)) ≈ 2e-7 nats per dimension (m = 0.1, s = 0.3, T = 1000 linear).
    L = L_T + Σ_{t≥1} KL_t + L_0, with L_0 the continuous decoder -log N(x_0; E[x_0|x_1], Var[x_0|x_1]).

    Compared: (1) per sample, every KL term of the engine (t = 1..T-1) equals the test's formula with the same noise,
    KL_t = ½(-1 + log σ_t² - log β̃_t + β̃_t/σ_t² + c_x0² (x_0 - E[x_0|x_t])²/σ_t²); (2) exactly, for each x_0, the
    expectations of those formulas (E[(x_0 - E[x_0|x_t])² | x_0] = (1 - k√ᾱ)² (x_0 - m)² + k² (1 - ᾱ), k the
    regression slope of x_0 on x_t) sum to NLL(x_0) + g(x_0); (3) in Monte Carlo, the engine's bound (with the
    decoder drawn here) minus NLL - g has mean 0: the sample mean is within 4 standard errors of 0.
    """
    m, s, num_steps, shape = 0.1, 0.3, 1000, (200, 1, 2, 2)
    chain = Chain(num_steps)
    x0 = m + s * torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scheduler = DDPMPlusScheduler(num_train_timesteps=num_steps, variance_type="learned")
    model = BayesOptimal(chain, m, s)
    kl_timesteps = torch.arange(1, num_steps)
    terms = evaluate_terms(
        model,
        x0,
        kl_timesteps,
        scheduler,
        generator=torch.Generator().manual_seed(1),
        max_batch_size=50_000,
        progress=False,
    ).terms_bpd.numpy()

    x = x0.numpy()
    dims = math.prod(shape[1:])
    ab = chain.abar
    slope = np.sqrt(ab) * s**2 / (ab * s**2 + 1 - ab)  # E[x_0 | x_t] = m + k (x_t - √ᾱ m)
    var_x0 = s**2 * (1 - ab) / (ab * s**2 + 1 - ab)  # Var[x_0 | x_t]
    logvar = model.logvar.numpy()

    # (1) per-sample identity at every timestep, with the documented noise redrawn here
    keys = seeded_noise_keys(1, shape[0])
    for column, t in enumerate(kl_timesteps.tolist()):
        noise = np.stack([documented_noise(key, t, shape[1:]) for key in keys])
        x_t = np.sqrt(ab[t]) * x + np.sqrt(1 - ab[t]) * noise
        posterior_x0 = m + slope[t] * (x_t - np.sqrt(ab[t]) * m)
        kl = gauss_kl(0.0, chain.post_logvar[t], chain.c_x0[t] * (x - posterior_x0), logvar[t])
        np.testing.assert_allclose(terms[:, column], per_image(kl) / LN2, rtol=1e-9, atol=1e-15)

    # (2) the expected terms sum to NLL + g, for each x_0
    t = np.arange(1, num_steps)[:, None, None, None, None]
    error_sq = (1 - slope[t] * np.sqrt(ab[t])) ** 2 * (x - m) ** 2 + slope[t] ** 2 * (1 - ab[t])
    expected_kl = gauss_kl(0.0, chain.post_logvar[t], 0.0, logvar[t]) + chain.c_x0[t] ** 2 * error_sq / (
        2 * np.exp(logvar[t])
    )
    error_sq_0 = (1 - slope[0] * np.sqrt(ab[0])) ** 2 * (x - m) ** 2 + slope[0] ** 2 * (1 - ab[0])
    expected_decoder = 0.5 * np.log(2 * np.pi * var_x0[0]) + error_sq_0 / (2 * var_x0[0])
    prior = prior_nats(chain, x)
    expected_bound = image_sum(prior + expected_decoder) + expected_kl.sum(0).reshape(shape[0], -1).sum(1)
    nll = image_sum(-log_normal(x, m, s**2))
    marginal_var = ab[-1] * s**2 + 1 - ab[-1]  # q(x_T) = N(√ᾱ_T m, ᾱ_T s² + 1 - ᾱ_T)
    g = image_sum(
        log_normal_expectation(np.sqrt(ab[-1]) * x, 1 - ab[-1], np.sqrt(ab[-1]) * m, marginal_var)
        - log_normal_expectation(np.sqrt(ab[-1]) * x, 1 - ab[-1], 0.0, 1.0)
    )
    np.testing.assert_allclose(expected_bound, nll + g, rtol=0, atol=1e-9)
    prior_mismatch = 0.5 * (ab[-1] * m**2 + marginal_var - 1 - np.log(marginal_var))  # KL(q(x_T) ‖ N(0, 1))
    assert 1.5e-7 < prior_mismatch < 2.5e-7

    # (3) Monte Carlo: the engine's KL terms, the exact prior and one decoder draw per image
    x_1 = np.sqrt(ab[0]) * x + np.sqrt(1 - ab[0]) * np.random.default_rng(2).standard_normal(shape)
    decoder = -log_normal(x, m + slope[0] * (x_1 - np.sqrt(ab[0]) * m), var_x0[0])
    bound = image_sum(prior + decoder) + terms.sum(1) * dims * LN2
    residual = bound - nll - g
    standard_error = residual.std(ddof=1) / math.sqrt(len(residual))
    assert abs(residual.mean()) < 4 * standard_error
    assert standard_error < 0.15  # nats per image of 4 dimensions: the comparison resolves ~0.05 bits/dim


def image_sum(values: np.ndarray) -> np.ndarray:
    return values.reshape(values.shape[0], -1).sum(1)


def log_normal_expectation(mean_x, var_x, mean, var):
    """E[log N(X; mean, var)] for X ~ N(mean_x, var_x)."""
    return -0.5 * np.log(2 * np.pi * var) - ((mean_x - mean) ** 2 + var_x) / (2 * var)


def log_normal(x, mean, var):
    return -0.5 * np.log(2 * np.pi * var) - (x - mean) ** 2 / (2 * var)


# ---------------------------------------------------------------------------------------------------------------
# The estimator
# ---------------------------------------------------------------------------------------------------------------


class ToySample(torch.nn.Module):
    """x̂_0(x_t, t) = b(t) x_t ("sample" prediction), b = √ᾱ v / (ᾱ v + 1 - ᾱ) with v = 0.3, and b = 1 at t = 0."""

    def __init__(self, chain: Chain):
        super().__init__()
        v = 0.3
        b = np.sqrt(chain.abar) * v / (chain.abar * v + 1 - chain.abar)
        b[0] = 1.0
        self.register_buffer("b", torch.from_numpy(b))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.b[t].view(-1, 1, 1, 1) * x_t


def expected_bound_bpd(chain: Chain, b: np.ndarray, x0: np.ndarray) -> np.ndarray:
    """E_ε[L(x_0)] in bits/dim for `ToySample` with fixed_small variances, per image, from the formulas.

    t ≥ 1: KL = c_x0² (x_0 - b x_t)² / (2 β̃_t) and x_0 - b x_t = (1 - b√ᾱ) x_0 - b√(1-ᾱ) ε, so
    E[KL] = c_x0² ((1 - b√ᾱ)² x_0² + b² (1 - ᾱ)) / (2 β̃_t). t = 0: μ = x_1 = √ᾱ_0 x_0 + √(1-ᾱ_0) ε, and
    E[-log P(bin)] is a Gauss-Hermite quadrature over ε (40 nodes, bin masses in 40-digit arithmetic).
    """
    t = np.arange(1, len(chain.betas))[:, None, None]
    ab = chain.abar[t]
    mean_sq = (1 - b[t] * np.sqrt(ab)) ** 2 * x0.reshape(1, x0.shape[0], -1) ** 2 + b[t] ** 2 * (1 - ab)
    kl = (chain.c_x0[t] ** 2 * mean_sq / (2 * chain.post_var[t])).mean(2).sum(0)
    nodes, weights = hermegauss(40)
    weights = weights / weights.sum()
    flat = np.broadcast_to(x0.reshape(x0.shape[0], -1)[..., None], (x0.shape[0], x0[0].size, len(nodes)))
    means = np.sqrt(chain.abar[0]) * flat + np.sqrt(1 - chain.abar[0]) * nodes
    sigma = math.exp(0.5 * chain.post_logvar[0])
    nll = np.vectorize(mp_bin_nll)(flat, means, sigma)
    decoder = (nll * weights).sum(-1).mean(1)
    prior = per_image(prior_nats(chain, x0))
    return (prior + kl + decoder) / LN2


@pytest.fixture(scope="module")
def estimator_setup():
    chain = Chain(50)
    scheduler = DDPMPlusScheduler(num_train_timesteps=50, prediction_type="sample")
    model = ToySample(chain)
    base = eight_bit_images((4, 1, 4, 4), seed=6, low=64, high=192)
    seeds = [21, 22, 23, 24]
    exact = variational_bound(model, base, scheduler, generator=generators(seeds), progress=False)
    return chain, scheduler, model, base, seeds, exact


def generators(seeds) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def test_exact_bound_is_an_unbiased_draw_of_the_expected_bound(estimator_setup):
    """The mean of 200 exact runs per image matches the expected bound computed here from the formulas."""
    chain, scheduler, model, base, _, _ = estimator_setup
    target = expected_bound_bpd(chain, model.b.numpy(), base.numpy())
    replicas = base.repeat(200, 1, 1, 1)
    exact = variational_bound(model, replicas, scheduler, generator=torch.Generator().manual_seed(0), progress=False)
    totals = exact.total_bpd.reshape(200, 4).numpy()
    standard_error = totals.std(0, ddof=1) / math.sqrt(200)
    assert (np.abs(totals.mean(0) - target) < 4 * standard_error).all()


def replicated_estimates(setup, replicas: int, profile, seed: int, **kwargs) -> BoundEstimate:
    """`replicas` estimates of each image with the exact run's noise keys and independent timestep draws."""
    _, scheduler, model, base, seeds, _ = setup
    return estimate_bound(
        model,
        base.repeat(replicas, 1, 1, 1),
        scheduler,
        profile=profile,
        generator=generators(seeds * replicas),
        timestep_generator=torch.Generator().manual_seed(seed),
        progress=False,
        **kwargs,
    )


@pytest.mark.parametrize("use_pilot", [False, True])
def test_estimator_is_unbiased_and_its_intervals_cover_the_exact_bound(estimator_setup, use_pilot):
    """400 independent estimates of each of 4 images (one batch of 1600 rows, independent timestep draws, the same
    noise as the exact run), with the default schedule profile or a pilot profile."""
    _, scheduler, model, base, seeds, exact = estimator_setup
    profile = None
    if use_pilot:
        profile = pilot_profile(
            model, base, scheduler, num_timesteps=16, generator=torch.Generator().manual_seed(7), progress=False
        )
    replicas = 400
    estimate = replicated_estimates(estimator_setup, replicas, profile, seed=8, num_strata=8)
    assert estimate.num_evaluations == replicas * 4 * (1 + 2 * 8)
    target = exact.total_bpd.numpy()
    totals = estimate.total_bpd.reshape(replicas, 4).numpy()
    errors = estimate.standard_error.reshape(replicas, 4).numpy()
    spread = totals.std(0, ddof=1)
    assert (np.abs(totals.mean(0) - target) < 4 * spread / math.sqrt(replicas)).all()  # unbiased
    calibration = spread / np.sqrt((errors**2).mean(0))
    assert ((calibration > 0.85) & (calibration < 1.18)).all()  # the standard error is honest
    low, high = estimate.interval(0.95)
    covered = ((low.numpy() <= np.tile(target, replicas)) & (np.tile(target, replicas) <= high.numpy())).mean()
    assert 0.9 <= covered <= 0.99
    groups = [
        BoundEstimate(
            **{name: getattr(estimate, name)[4 * k : 4 * k + 4] for name in ESTIMATE_FIELDS}, num_evaluations=0
        )
        for k in range(replicas)
    ]
    mean_covered = np.mean([low <= target.mean() <= high for low, high in (g.mean_interval(0.95) for g in groups)])
    assert 0.9 <= mean_covered <= 0.99
    assert torch.equal(estimate.decoder_bpd[:4], exact.decoder_bpd)  # the decoder term is exact


ESTIMATE_FIELDS = ("total_bpd", "standard_error", "degrees_of_freedom", "prior_bpd", "decoder_bpd", "kl_bpd")


def test_importance_profile_reduces_the_error(estimator_setup):
    _, _, _, _, _, exact = estimator_setup
    spreads = [
        replicated_estimates(estimator_setup, 100, profile, seed=2, num_strata=8).total_bpd.reshape(100, 4).std(0)
        for profile in (torch.ones(50), None, exact.terms_bpd.mean(0))  # uniform, schedule, the terms themselves
    ]
    assert (spreads[1] < 0.5 * spreads[0]).all()
    assert (spreads[2] < 0.5 * spreads[0]).all()


def test_strata_partition_and_sampling():
    profile = torch.tensor([0.0, 30.0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], dtype=torch.float64)
    strata = make_strata(profile, 12, 4)
    assert strata.bounds.tolist()[0] == 1 and strata.bounds.tolist()[-1] == 12 and strata.num_strata == 4
    assert strata.bounds.tolist()[1] == 2  # the heavy timestep is a stratum of its own
    assert make_strata(torch.ones(6), 6, 50).bounds.tolist() == [1, 2, 3, 4, 5, 6]
    probabilities = strata.probabilities.numpy()
    assert probabilities[0] == 0 and math.isclose(probabilities.sum(), 1.0, rel_tol=1e-12)
    expected = 0.95 * profile[1:].numpy() / profile[1:].sum().item() + 0.05 / 11
    np.testing.assert_allclose(probabilities[1:], expected, rtol=1e-12)
    # a fine grid of uniforms reproduces p_t / P_s in every stratum, and the weights make E[w f(t)] = Σ_{t∈s} f(t)
    count = 100_000
    uniforms = ((torch.arange(count, dtype=torch.float64) + 0.5) / count).expand(strata.num_strata, count)
    timesteps, weights = strata.sample(uniforms[None])
    f = torch.arange(12, dtype=torch.float64) ** 2
    bounds = strata.bounds.tolist()
    for s in range(strata.num_strata):
        inside = range(bounds[s], bounds[s + 1])
        assert set(timesteps[0, s].tolist()) == set(inside)
        np.testing.assert_allclose((weights[0, s] * f[timesteps[0, s]]).mean().item(), f[list(inside)].sum(), rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Models, schedulers and bad input
# ---------------------------------------------------------------------------------------------------------------


def test_accepts_unet_callables_and_pipelines():
    from ddpm_plus.pipeline_ddpm_plus import DDPMPlusPipeline

    torch.manual_seed(0)
    unet = ddpm_unet().eval()  # callables are called as they are: the wrapped UNet must be in eval mode
    scheduler = DDPMPlusScheduler(num_train_timesteps=8)
    x0 = eight_bit_images((2, 3, 16, 16), seed=7).float()
    candidates = [
        (unet, scheduler),
        (lambda x, t: unet(x, t), scheduler),  # returns a UNet2DOutput
        (lambda x, t: unet(x, t).sample, scheduler),
        (lambda x, t: unet(x, t, return_dict=False), scheduler),
        (SimpleNamespace(unet=unet, scheduler=scheduler), None),
        (DDPMPlusPipeline(unet, scheduler), None),
        (unet, DDPMScheduler(num_train_timesteps=8)),  # converted with from_config
    ]
    results = [
        variational_bound(model, x0, sched, generator=torch.Generator().manual_seed(0), progress=False).terms_bpd
        for model, sched in candidates
    ]
    for other in results[1:]:
        assert torch.equal(other, results[0])


def test_dropout_is_off_and_the_training_mode_restored():
    torch.manual_seed(0)
    unet = ddpm_unet(dropout=0.5)
    scheduler = DDPMPlusScheduler(num_train_timesteps=5)
    x0 = eight_bit_images((1, 3, 16, 16), seed=8).float()
    unet.train()
    first = variational_bound(unet, x0, scheduler, generator=torch.Generator().manual_seed(0), progress=False)
    assert unet.training
    unet.eval()
    second = variational_bound(unet, x0, scheduler, generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.equal(first.terms_bpd, second.terms_bpd) and not unet.training


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return ddpm_unet(), DDPMPlusScheduler(num_train_timesteps=4)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.zeros(3, 16, 16), "4-D"),
        (torch.zeros(0, 3, 16, 16), "at least one"),
        (torch.full((1, 3, 16, 16), 0.5), "8-bit"),
        (torch.full((1, 3, 16, 16), 2.0), r"\[-1, 1\]"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.float16), "float32 or float64"),
        (torch.zeros(1, 1, 16, 16), "channels"),
        ([[0.0]], "4-D"),
    ],
)
def test_bad_images(tiny, images, message):
    unet, scheduler = tiny
    with pytest.raises(ValueError, match=message):
        variational_bound(unet, images, scheduler, progress=False)
    with pytest.raises(ValueError, match=message):
        estimate_bound(unet, images, scheduler, progress=False)


def test_bad_models_and_arguments(tiny):
    unet, scheduler = tiny
    x0 = -torch.ones(2, 3, 16, 16)
    cases = [
        (
            lambda: variational_bound(
                unet, x0, DDPMPlusScheduler(num_train_timesteps=4, variance_type="learned_range")
            ),
            "twice the sample's channels",
        ),
        (lambda: variational_bound(ddpm_unet().half(), x0, scheduler), "float32"),
        (lambda: variational_bound(ddpm_unet().bfloat16(), x0, scheduler), "float32"),
        (lambda: variational_bound(lambda x, t: x.half(), x0, scheduler), "float32 or float64 outputs"),
        (lambda: variational_bound(lambda x, t: x[:, :, :8], x0, scheduler), "spatial size"),
        (lambda: variational_bound(lambda x, t: x * math.nan, x0, scheduler), "NaN"),
        (lambda: variational_bound(lambda x, t: "no tensor", x0, scheduler), "must return a tensor"),
        (lambda: variational_bound(unet, x0), "pass a scheduler"),
        (lambda: variational_bound(unet, x0, object()), "DDPM-style scheduler"),
        (lambda: variational_bound(unet, x0, scheduler, max_batch_size=0), "max_batch_size"),
        (lambda: variational_bound(unet, x0, scheduler, generator=[torch.Generator()]), "one per image"),
        (lambda: evaluate_terms(unet, x0, [0, 4], scheduler), r"0\.\.3"),
        (lambda: evaluate_terms(unet, x0, torch.tensor([0.5]), scheduler), "integers"),
        (lambda: evaluate_terms(unet, x0, torch.zeros(3, 2, dtype=torch.long), scheduler), "shape"),
        (lambda: estimate_bound(unet, x0, scheduler, samples_per_stratum=1), "at least 2"),
        (lambda: estimate_bound(unet, x0, scheduler, profile=torch.ones(3)), "one value per timestep"),
        (lambda: estimate_bound(unet, x0, scheduler, profile=-torch.ones(4)), "non-negative"),
        (lambda: estimate_bound(unet, x0, scheduler, num_strata=0), "num_strata"),
        (lambda: estimate_bound(unet, x0, DDPMPlusScheduler(num_train_timesteps=1)), "at least 2 timesteps"),
        (lambda: student_t_quantile(1.5, torch.tensor(3.0)), "confidence"),
        (lambda: student_t_quantile(0.95, torch.tensor([3.0, 0.5])), "at least 1"),
        (lambda: student_t_quantile(0.95, torch.tensor(math.nan)), "at least 1"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.parametrize("confidence", [0.5, 0.8, 0.9, 0.95, 0.99, 0.999])
def test_student_t_quantile_matches_scipy(confidence):
    """The two-sided quantile against scipy's t.ppf, from 1 degree of freedom (Cauchy) to the normal limit, and
    against the closed forms at 1, 2 and infinitely many degrees of freedom."""
    from scipy import stats

    dofs = [1, 1.0001, 1.3, 1.5, 2, 2.5, 3.7, 5, 10, 30, 100, 1e3, 9999, 1e4, 1e6, 1e12, math.inf]
    expected = torch.from_numpy(stats.t.ppf((1 + confidence) / 2, dofs))
    torch.testing.assert_close(student_t_quantile(confidence, torch.tensor(dofs)), expected, rtol=1e-6, atol=0)
    # the Cauchy quantile has a closed form: tan(π c / 2)
    assert student_t_quantile(confidence, torch.tensor(1.0)).item() == pytest.approx(
        math.tan(math.pi * confidence / 2), rel=1e-12
    )
    # ν = 2: F(x) = 1/2 + x / (2 √(2 + x²)), so the quantile of p = (1 + c)/2 is (2p - 1) / √(2 p (1 - p))
    p = (1 + confidence) / 2
    assert student_t_quantile(confidence, torch.tensor(2.0)).item() == pytest.approx(
        (2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-12
    )
    # ν = ∞: the normal quantile √2 erfinv(c); a float is accepted as well as a tensor
    normal = math.sqrt(2) * torch.special.erfinv(torch.tensor(confidence, dtype=torch.float64)).item()
    assert student_t_quantile(confidence, math.inf).item() == pytest.approx(normal, rel=1e-12)


def test_kl_terms_accept_continuous_data_but_the_decoder_needs_8bit(tiny):
    unet, scheduler = tiny
    x0 = torch.full((1, 3, 16, 16), 0.3)
    terms = evaluate_terms(unet, x0, [1, 2, 3], scheduler, progress=False)
    assert terms.terms_bpd.shape == (1, 3) and torch.isfinite(terms.terms_bpd).all()
    with pytest.raises(ValueError, match="8-bit"):
        evaluate_terms(unet, x0, [0, 1], scheduler, progress=False)


# ---------------------------------------------------------------------------------------------------------------
# The reference's tanh approximation of the decoder
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma_name", ["sqrt_posterior_variance", "sqrt_beta_1"])
def test_size_of_the_reference_tanh_decoder_difference(sigma_name):
    """Typical decoder scales (σ_1 = √β̃ clipped, as fixed_small uses at t = 0, or √β_1; T = 1000 linear): the tanh
    approximation differs from the exact decoder by < 1.5 millibits per dimension when the mean is within one bin
    (2/255) of x_0, by < 0.07 bits within three bins, and by more than 0.3 bits at five bins (the tails, where the
    approximate CDF's absolute error of ~1e-4 is large relative to the bin mass, and the 1e-12 floor)."""
    chain = Chain(1000)
    sigma = math.sqrt(chain.post_var[1]) if sigma_name == "sqrt_posterior_variance" else math.sqrt(chain.betas[0])
    log_scale = torch.tensor(math.log(sigma), dtype=torch.float64)
    x0 = torch.arange(256, dtype=torch.float64) / 127.5 - 1

    def largest_difference_bits(mean_error_bins: float) -> float:
        mean = x0 + mean_error_bins * 2 / 255
        exact = -discretized_gaussian_log_likelihood(x0, mean, log_scale)
        return (tanh_decoder_nll(x0, mean, log_scale) - exact).abs().max().item() / LN2

    assert max(largest_difference_bits(bins) for bins in (0.0, 0.25, 0.5, 0.75, 1.0)) < 1.5e-3
    assert largest_difference_bits(0.0) > 1e-5  # a real, measurable difference
    assert max(largest_difference_bits(bins) for bins in (1.5, 2.0, 2.5, 3.0)) < 0.07
    assert largest_difference_bits(5.0) > 0.3


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("model")
    ddpm_unet(in_channels=1).save_pretrained(directory / "unet")
    DDPMPlusScheduler(num_train_timesteps=20).save_pretrained(directory / "scheduler")
    return directory


def run_cli(saved_model, tmp_path, *extra):
    from ddpm_plus.cli import main

    output = tmp_path / "results.json"
    status = main(["bpd", "--model", str(saved_model), "--max-images", "3", "--output", str(output), *extra])
    assert status == 0
    return json.loads(output.read_text())


def test_cli_exact(saved_model, tmp_path, capsys):
    from ddpm_plus.cli_bpd import image_generators, load_images, load_model

    report = run_cli(saved_model, tmp_path, "--batch-size", "20", "--seed", "4")
    assert "bits/dim:" in capsys.readouterr().out
    assert report["settings"]["num_timesteps"] == "full" and report["settings"]["num_train_timesteps"] == 20
    assert report["summary"]["num_images"] == 3 and report["summary"]["num_evaluations"] == 60
    assert len(report["summary"]["mean_terms_bpd"]) == 20
    unet, scheduler = load_model(saved_model, "cpu")
    images = load_images("digits", "test", unet.config, 3)
    direct = variational_bound(unet, images, scheduler, generator=image_generators(4, range(3)), progress=False)
    np.testing.assert_allclose([item["bpd"] for item in report["images"]], direct.total_bpd.numpy(), rtol=1e-6)
    again = run_cli(saved_model, tmp_path, "--batch-size", "64", "--seed", "4")  # 3 images per network call
    np.testing.assert_allclose(
        [item["bpd"] for item in again["images"]], [item["bpd"] for item in report["images"]], rtol=1e-6
    )
    low, high = report["summary"]["ci95"]
    assert low < report["summary"]["mean_bpd"] < high


def test_cli_estimate(saved_model, tmp_path):
    report = run_cli(saved_model, tmp_path, "--num-timesteps", "9", "--pilot-images", "2", "--pilot-timesteps", "4")
    summary = report["summary"]
    assert summary["num_evaluations"] == 3 * 9 and summary["pilot_evaluations"] == 2 * 4
    assert summary["estimator_ci95"][0] < summary["mean_bpd"] < summary["estimator_ci95"][1]
    assert all(item["ci95"][0] <= item["bpd"] <= item["ci95"][1] for item in report["images"])


@pytest.mark.parametrize("num_timesteps", ["full", "9"])
def test_cli_plot_writes_the_figure(saved_model, tmp_path, capsys, num_timesteps):
    """`--plot` writes the PNG figure, for the exact bound and for the estimate (with its pilot measurement); the
    report's rate is the prior once x_{T-1} is produced and all but the decoder once x_0 is."""
    from ddpm_plus.plots import FIGURE_DPI, FIGURE_SIZE

    plot = tmp_path / "figures" / "bound.png"
    report = run_cli(
        saved_model, tmp_path, "--num-timesteps", num_timesteps, "--pilot-images", "2", "--plot", str(plot)
    )
    assert f"wrote {plot}" in capsys.readouterr().out
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size == tuple(round(inches * FIGURE_DPI) for inches in FIGURE_SIZE)
    summary = report["summary"]
    if num_timesteps == "full":
        assert summary["mean_rate_bpd"][-1] == pytest.approx(summary["mean_prior_bpd"], rel=1e-12)
        rate_at_x0 = summary["mean_bpd"] - summary["mean_decoder_bpd"]
        assert summary["mean_rate_bpd"][0] == pytest.approx(rate_at_x0, rel=1e-12)


def test_cli_errors(saved_model, tmp_path, capsys):
    from ddpm_plus.cli import main

    assert main(["bpd", "--model", str(tmp_path / "missing")]) == 2
    assert "missing: no such folder, and not a Hub id (owner/name)" in capsys.readouterr().err
    assert main(["bpd", "--model", str(saved_model), "--max-images", "0"]) == 2
    with pytest.raises(SystemExit):
        main(["bpd", "--model", str(saved_model), "--num-timesteps", "2"])


def test_cli_seeds_each_image_from_the_seed_and_its_index():
    from ddpm_plus.cli_bpd import image_generators
    from ddpm_plus.utils import derived_seed

    seeds = [generator.initial_seed() for generator in image_generators(4, range(2, 5))]
    assert seeds == [derived_seed(4, index) for index in range(2, 5)] and len(set(seeds)) == 3


def test_cli_refuses_a_non_square_model_rather_than_cropping_to_one_side():
    from ddpm_plus.cli_bpd import load_images

    square = load_images("digits", "test", SimpleNamespace(sample_size=[8, 8], in_channels=1), 2)
    assert square.shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="the model takes 8x16 images, but the data sets are loaded as square"):
        load_images("digits", "test", SimpleNamespace(sample_size=[8, 16], in_channels=1), 2)


def test_pipeline_log_likelihood_is_the_engines_bound():
    """`DDPMPlusPipeline.log_likelihood` computes `variational_bound`: the same generator gives the same terms,
    x̂_0 errors and total, for a single generator and for one generator per image; the estimator with that
    generator brackets it."""
    from pipeline_fixtures import SCHEDULER_CONFIG, generators, random_uint8_images, tiny_unet

    from ddpm_plus.pipeline_ddpm_plus import DDPMPlusPipeline

    pipe = DDPMPlusPipeline(unet=tiny_unet(), scheduler=DDPMPlusScheduler(**SCHEDULER_CONFIG))
    pipe.set_progress_bar_config(disable=True)
    pixels = random_uint8_images(6, seed=3)
    x0 = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    for make_generator in (lambda: torch.Generator().manual_seed(1), lambda: generators(list(range(6)))):
        output = pipe.log_likelihood(pixels, generator=make_generator(), max_batch_size=16)
        engine = variational_bound(
            pipe.unet, x0, pipe.scheduler, generator=make_generator(), max_batch_size=16, progress=False
        )
        assert torch.equal(output.terms_bpd, engine.terms_bpd) and torch.equal(output.x0_mse, engine.x0_mse)
        assert torch.equal(output.bits_per_dim, engine.total_bpd) and torch.equal(output.prior_bpd, engine.prior_bpd)
    half_precision = DDPMPlusPipeline(unet=tiny_unet(dtype=torch.float16), scheduler=pipe.scheduler)
    with pytest.raises(ValueError, match="model.float"):
        half_precision.log_likelihood(pixels)
