"""The figures of the bound (`ddpm_plus.plots`): the data behind each panel against independent float64 computations
from the engine's outputs, the distortion of the Gaussian-optimal denoiser against its closed form, the estimate's
draws, pilot and per-stratum rates, and the figure files (not their pixels)."""

import math
import sys

import numpy as np
import pytest
import torch
from gaussian_reference import optimal_epsilon
from PIL import Image

from ddpm_plus.bound_estimation import (
    BoundEstimate,
    estimate_bound,
    evaluate_terms,
    make_strata,
    pilot_profile,
    pilot_terms,
    pilot_timesteps,
)
from ddpm_plus.likelihood import variational_bound
from ddpm_plus.plots import (
    FIGURE_DPI,
    FIGURE_SIZE,
    bound_figure,
    bound_figure_data,
    figure_image,
    ode_figure,
    ode_figure_data,
    save_bound_figure,
    save_ode_figure,
)
from ddpm_plus.probability_flow import ode_likelihood
from ddpm_plus.scheduling_ddpm_plus import DDPMPlusScheduler

T = 50
FIGURE_PIXELS = (round(FIGURE_SIZE[0] * FIGURE_DPI), round(FIGURE_SIZE[1] * FIGURE_DPI))


class GaussianDenoiser(torch.nn.Module):
    """ε*(x_t) of data with mean `mean` and variance `var` per dimension (Bayes-optimal for Gaussian data, and the
    best linear denoiser for any data with these moments); float64 buffers, so the engine feeds float64 inputs."""

    def __init__(self, scheduler: DDPMPlusScheduler, mean: float, var: float):
        super().__init__()
        self.mean, self.var = mean, var
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod_f64.clone())

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return optimal_epsilon(self.alphas_cumprod[t].view(-1, 1, 1, 1), x_t, self.mean, self.var)


def eight_bit_gaussian_images(count: int, seed: int, shape=(1, 2, 2)) -> torch.Tensor:
    """Images on the 8-bit grid: N(0.1, 0.3²) per dimension, rounded to the nearest level in [-1, 1]."""
    normal = 0.1 + 0.3 * torch.randn(
        (count, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    return ((normal + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1


@pytest.fixture(scope="module")
def setup():
    scheduler = DDPMPlusScheduler(num_train_timesteps=T)
    images = eight_bit_gaussian_images(6, seed=0)
    model = GaussianDenoiser(scheduler, mean=0.1, var=0.09)
    return scheduler, model, images


def rate_reference(prior: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """(B, T) prior + Σ_{s>t} terms[:, s], summed column by column."""
    return np.stack([prior + terms[:, t + 1 :].sum(1) for t in range(terms.shape[1])], axis=1)


# ---------------------------------------------------------------------------------------------------------------
# The exact bound
# ---------------------------------------------------------------------------------------------------------------


def test_exact_figure_data_are_the_engines_terms_rate_and_rmse(setup):
    scheduler, model, images = setup
    result = variational_bound(model, images, scheduler, generator=torch.Generator().manual_seed(1), progress=False)
    data = bound_figure_data(result)
    terms, prior, x0_mse = result.terms_bpd.numpy(), result.prior_bpd.numpy(), result.x0_mse.numpy()  # float64
    assert data.num_train_timesteps == T and not data.is_estimate and data.standard_error is None
    np.testing.assert_array_equal(data.term_timesteps, np.arange(1, T))
    np.testing.assert_allclose(data.terms_bpd, terms[:, 1:].mean(0), rtol=1e-12)
    assert data.decoder_bpd == pytest.approx(terms[:, 0].mean(), rel=1e-12)
    assert data.prior_bpd == pytest.approx(prior.mean(), rel=1e-12)
    assert data.total_bpd == pytest.approx((prior + terms.sum(1)).mean(), rel=1e-12)
    np.testing.assert_array_equal(data.rate_timesteps, np.arange(T))
    np.testing.assert_allclose(data.rate_bpd, rate_reference(prior, terms).mean(0), rtol=1e-12)
    np.testing.assert_allclose(data.distortion_rmse, 127.5 * np.sqrt(x0_mse.mean(0)), rtol=1e-12)
    # the rate once x_{T-1} is produced is the prior; once x_0 is produced, all but the decoder
    assert data.rate_bpd[T - 1] == pytest.approx(prior.mean(), rel=1e-12)
    assert data.rate_bpd[0] == pytest.approx((result.total_bpd - result.decoder_bpd).mean().item(), rel=1e-12)
    assert data.pilot_timesteps is None


def test_distortion_of_the_gaussian_optimal_denoiser_matches_the_closed_form():
    """With ε* for the data's mean m and variance s² (over all images and dimensions), x̂_0 = m + k (x_t - √ᾱ m)
    with k = √ᾱ s² / (ᾱ s² + 1 - ᾱ), and E_ε[mean over images of ‖x_0 - x̂_0‖²/D] = s²(1 - ᾱ_t)/(ᾱ_t s² + 1 - ᾱ_t)
    exactly. The figure's distortion, squared and scaled back, is within 4 standard errors of it."""
    scheduler = DDPMPlusScheduler(num_train_timesteps=T)
    images = eight_bit_gaussian_images(1000, seed=3)
    mean, var = images.mean().item(), images.var(correction=0).item()
    model = GaussianDenoiser(scheduler, mean, var)
    result = variational_bound(
        model, images, scheduler, generator=torch.Generator().manual_seed(4), max_batch_size=10_000, progress=False
    )
    data = bound_figure_data(result)
    ab = scheduler.alphas_cumprod_f64.numpy()
    for t in (0, 1, 5, 20, T - 1):
        closed_form = var * (1 - ab[t]) / (ab[t] * var + 1 - ab[t])
        measured = (data.distortion_rmse[t] / 127.5) ** 2
        per_image = result.x0_mse[:, t].numpy()
        standard_error = per_image.std(ddof=1) / math.sqrt(len(per_image))
        assert standard_error < 0.06 * closed_form  # the comparison resolves a few percent
        assert abs(measured - closed_form) < 4 * standard_error, (t, measured, closed_form, standard_error)


# ---------------------------------------------------------------------------------------------------------------
# The estimate
# ---------------------------------------------------------------------------------------------------------------


def test_pilot_profile_is_the_profile_of_the_pilot_terms(setup):
    """`pilot_terms` measures the KL terms at the pilot timesteps; `pilot_profile` is √(mean KL²) over the images,
    interpolated linearly in log space (checked here against the engine's terms at those timesteps)."""
    scheduler, model, images = setup
    pilot = pilot_terms(model, images, scheduler, num_timesteps=8, generator=torch.Generator().manual_seed(5))
    grid = pilot_timesteps(T, 8)
    np.testing.assert_array_equal(pilot.timesteps.numpy(), grid.numpy())
    terms = evaluate_terms(model, images, grid, scheduler, generator=torch.Generator().manual_seed(5), progress=False)
    assert torch.equal(pilot.terms_bpd, terms.terms_bpd) and pilot.num_train_timesteps == T
    profile = pilot_profile(model, images, scheduler, num_timesteps=8, generator=torch.Generator().manual_seed(5))
    log_rms = np.log(np.sqrt((terms.terms_bpd.numpy() ** 2).mean(0)))
    expected = np.exp(np.interp(np.arange(1, T), grid.numpy(), log_rms))
    assert profile[0] == 0
    np.testing.assert_allclose(profile[1:].numpy(), expected, rtol=1e-12)
    assert torch.equal(profile, pilot.profile())


@pytest.fixture(scope="module")
def estimate_setup(setup):
    """An estimate of 6 images in two batches (joined with `concat`) with a pilot profile, 5 strata of 3 draws."""
    scheduler, model, images = setup
    pilot = pilot_terms(model, images[:4], scheduler, num_timesteps=10, generator=torch.Generator().manual_seed(6))
    seeds = [10, 11, 12, 13, 14, 15]
    batches = [
        estimate_bound(
            model, images[part], scheduler, num_strata=5, samples_per_stratum=3, profile=pilot.profile(),
            generator=[torch.Generator().manual_seed(seed) for seed in seeds[part]], progress=False,
        )
        for part in (slice(0, 2), slice(2, 6))
    ]  # fmt: skip
    return pilot, seeds, BoundEstimate.concat(batches)


def test_estimate_records_its_draws_and_stratum_estimates(setup, estimate_setup):
    """The recorded draws are the engine's terms at the drawn timesteps (same noise keys), within their strata,
    and the stratum estimates are the means of P_s / p_t · KL_t, computed here from the proposal."""
    scheduler, model, images = setup
    pilot, seeds, estimate = estimate_setup
    strata = make_strata(pilot.profile(), T, 5)
    bounds = strata.bounds.numpy()
    assert (estimate.stratum_bounds.numpy() == bounds).all() and estimate.stratum_bounds.shape == (6, 6)
    timesteps = estimate.sampled_timesteps.numpy()
    assert timesteps.shape == (6, 15) and estimate.sampled_timesteps.dtype == torch.long
    stratum_of_column = np.repeat(np.arange(5), 3)
    assert ((bounds[stratum_of_column] <= timesteps) & (timesteps < bounds[stratum_of_column + 1])).all()
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    terms = evaluate_terms(model, images, estimate.sampled_timesteps, scheduler, generator=generators, progress=False)
    np.testing.assert_array_equal(estimate.sampled_terms_bpd.numpy(), terms.terms_bpd.numpy())
    np.testing.assert_array_equal(estimate.sampled_x0_mse.numpy(), terms.x0_mse.numpy())

    probabilities = strata.probabilities.numpy()
    stratum_mass = np.array([probabilities[bounds[s] : bounds[s + 1]].sum() for s in range(5)])
    weighted = stratum_mass[stratum_of_column] / probabilities[timesteps] * terms.terms_bpd.numpy()
    stratum_kl = weighted.reshape(6, 5, 3).mean(2)
    np.testing.assert_allclose(estimate.stratum_kl_bpd.numpy(), stratum_kl, rtol=1e-12)
    np.testing.assert_allclose(estimate.kl_bpd.numpy(), stratum_kl.sum(1), rtol=1e-12)


def test_estimate_figure_data_are_the_draws_the_pilot_and_the_stratum_rates(estimate_setup):
    pilot, _, estimate = estimate_setup
    data = bound_figure_data(estimate, pilot)
    assert data.is_estimate and data.num_train_timesteps == T
    # panel (a): every draw, image by image, and the pilot's mean ± standard error over its images
    np.testing.assert_array_equal(data.term_timesteps, estimate.sampled_timesteps.numpy().reshape(-1))
    np.testing.assert_array_equal(data.terms_bpd, estimate.sampled_terms_bpd.numpy().reshape(-1))
    assert data.decoder_bpd == pytest.approx(estimate.decoder_bpd.mean().item(), rel=1e-12)
    assert data.prior_bpd == pytest.approx(estimate.prior_bpd.mean().item(), rel=1e-12)
    assert data.total_bpd == pytest.approx(estimate.mean_bpd, rel=1e-12)
    assert data.standard_error == pytest.approx(estimate.mean_standard_error, rel=1e-12)
    pilot_values = pilot.terms_bpd.numpy()
    count = len(pilot_values)
    pilot_mean = pilot_values.sum(0) / count
    pilot_se = np.sqrt(((pilot_values - pilot_mean) ** 2).sum(0) / (count - 1) / count)
    np.testing.assert_array_equal(data.pilot_timesteps, pilot.timesteps.numpy())
    np.testing.assert_allclose(data.pilot_mean_bpd, pilot_mean, rtol=1e-12)
    np.testing.assert_allclose(data.pilot_standard_error, pilot_se, rtol=1e-12)
    # panel (b): per stratum, prior + the stratum estimates above it, against the RMSE of the stratum's draws
    bounds = estimate.stratum_bounds[0].numpy()
    stratum_kl, prior = estimate.stratum_kl_bpd.numpy(), estimate.prior_bpd.numpy()
    rate = np.stack([prior + stratum_kl[:, s + 1 :].sum(1) for s in range(5)], axis=1).mean(0)
    np.testing.assert_array_equal(data.rate_timesteps, bounds[1:] - 1)
    np.testing.assert_allclose(data.rate_bpd, rate, rtol=1e-12)
    assert data.rate_bpd[-1] == pytest.approx(prior.mean(), rel=1e-12)  # the top stratum: the prior only
    draws = estimate.sampled_x0_mse.numpy()
    rmse = [127.5 * math.sqrt(draws[:, 3 * s : 3 * s + 3].mean()) for s in range(5)]
    np.testing.assert_allclose(data.distortion_rmse, rmse, rtol=1e-12)


def test_stratum_rates_are_unbiased_estimates_of_the_exact_rate(setup):
    """Over 300 independent timestep draws with the exact run's noise keys, the mean per-stratum rate of each image
    is within 4 standard errors of the exact rate at the stratum's highest timestep."""
    scheduler, model, images = setup
    seeds, replicas = [20, 21, 22], 300
    exact = variational_bound(
        model, images[:3], scheduler, generator=[torch.Generator().manual_seed(seed) for seed in seeds], progress=False
    )
    estimate = estimate_bound(
        model, images[:3].repeat(replicas, 1, 1, 1), scheduler, num_strata=4,
        generator=[torch.Generator().manual_seed(seed) for seed in seeds * replicas],
        timestep_generator=torch.Generator().manual_seed(23), progress=False,
    )  # fmt: skip
    rates = estimate.stratum_rate_bpd().numpy().reshape(replicas, 3, -1)
    target = exact.rate_bpd().numpy()[:, estimate.stratum_bounds[0, 1:].numpy() - 1]
    standard_error = rates.std(0, ddof=1) / math.sqrt(replicas)
    spread = standard_error[:, :-1]  # the top stratum's rate is the exact prior: no spread
    assert (spread > 0).all()
    np.testing.assert_allclose(rates.mean(0)[:, -1], target[:, -1], rtol=1e-12)
    assert (np.abs(rates.mean(0) - target)[:, :-1] < 4 * spread).all()


def test_estimates_without_draws_or_with_different_strata_are_refused(setup, estimate_setup):
    scheduler, model, images = setup
    _, _, estimate = estimate_setup
    summaries = ("total_bpd", "standard_error", "degrees_of_freedom", "prior_bpd", "decoder_bpd", "kl_bpd")
    bare = BoundEstimate(**{name: getattr(estimate, name) for name in summaries}, num_evaluations=0)
    with pytest.raises(ValueError, match="no per-draw data"):
        bound_figure_data(bare)
    assert BoundEstimate.concat([bare, bare]).sampled_timesteps is None
    other = estimate_bound(model, images[:1], scheduler, num_strata=5, samples_per_stratum=3, progress=False)
    with pytest.raises(ValueError, match="different strata"):
        bound_figure_data(BoundEstimate.concat([estimate, other]))
    with pytest.raises(ValueError, match="BoundResult or a BoundEstimate"):
        bound_figure_data(images)


# ---------------------------------------------------------------------------------------------------------------
# The figure
# ---------------------------------------------------------------------------------------------------------------


def test_figure_panels_and_files(setup, estimate_setup, tmp_path):
    scheduler, model, images = setup
    pilot, _, estimate = estimate_setup
    exact = variational_bound(model, images, scheduler, progress=False)
    for result, extra in ((exact, {}), (estimate, {"pilot": pilot})):
        figure = bound_figure(result, model_name="toy-model", **extra)
        terms_axes, rate_axes = figure.axes
        assert "toy-model" in figure.get_suptitle() and f"{bound_figure_data(result).total_bpd:.4f}" in (
            figure.get_suptitle()
        )
        assert terms_axes.get_yscale() == "log" and "bits/dim" in terms_axes.get_ylabel()
        assert "[0, 255]" in rate_axes.get_ylabel() and "bits/dim" in rate_axes.get_xlabel()
        assert rate_axes.get_yscale() == "log"
        legend = [text.get_text() for text in terms_axes.get_legend().get_texts()]
        assert any("decoder" in text for text in legend) and any("prior" in text for text in legend)
        assert any("pilot" in text for text in legend) == ("pilot" in extra)
        assert any(text.get_text().startswith("t=") for text in rate_axes.texts)
        image = figure_image(figure)
        assert image.mode == "RGB" and image.size == FIGURE_PIXELS
    path = save_bound_figure(estimate, tmp_path / "bound.png", pilot=pilot, model_name="toy-model")
    with Image.open(path) as saved:
        assert saved.format == "PNG" and saved.size == FIGURE_PIXELS


def test_ode_figure_data_file_and_the_bound_beside_it(setup, tmp_path):
    scheduler, model, images = setup
    generator = torch.Generator().manual_seed(0)
    ode = ode_likelihood(lambda x, t: 0.3 * x, images, scheduler, num_draws=2, generator=generator, progress=False)
    exact = variational_bound(model, images, scheduler, progress=False)
    data = ode_figure_data(ode, exact)
    path = ode.path_bpd.numpy().mean(0)
    np.testing.assert_allclose(data.step_bpd, path[1:] - path[:-1], rtol=1e-12)
    rate = ode.prior_bpd.numpy().mean() + path[-1] - path
    np.testing.assert_allclose(data.rate_bpd, rate, rtol=1e-12)
    # down to s = 0 the rate is the code length less the 8-bit bins' log₂(255/2)
    assert data.rate_bpd[0] + math.log2(127.5) == pytest.approx(ode.bits_per_dim.mean().item(), rel=1e-12)
    terms, prior = exact.terms_bpd.numpy(), exact.prior_bpd.numpy()
    np.testing.assert_allclose(data.bound_rate_bpd, rate_reference(prior, terms).mean(0), rtol=1e-12)
    np.testing.assert_allclose(data.bound_terms_bpd, terms[:, 1:].mean(0), rtol=1e-12)
    assert ode_figure_data(ode).bound_terms_bpd is None
    figure = ode_figure(ode, bound=exact, model_name="toy-model")
    step_axes, rate_axes = figure.axes
    assert "toy-model" in figure.get_suptitle() and f"{ode.mean_bpd:.4f}" in figure.get_suptitle()
    assert len(step_axes.get_lines()) == 2 and step_axes.get_yscale() == "symlog"
    legend = [text.get_text() for text in rate_axes.get_legend().get_texts()]
    assert legend == [f"ODE: {ode.mean_bpd:.4f} bits/dim", f"bound: {exact.total_bpd.mean().item():.4f} bits/dim"]
    with Image.open(save_ode_figure(ode, tmp_path / "ode.png")) as saved:
        assert saved.format == "PNG" and saved.size == FIGURE_PIXELS


def test_a_missing_matplotlib_is_one_line_naming_the_extra(setup, monkeypatch):
    scheduler, model, images = setup
    result = variational_bound(model, images[:1], scheduler, progress=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(ModuleNotFoundError) as error:
        bound_figure(result)
    message = str(error.value)
    assert "\n" not in message and "pip install 'ddpm_plus[plot]'" in message
