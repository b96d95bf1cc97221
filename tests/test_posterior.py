"""DDPMPlusPosteriorPipeline: exact posterior sampling on Gaussian data, and argument checks."""

import math

import numpy as np
import pytest
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput
from gaussian_reference import exact_sampler_moments, optimal_epsilon
from pipeline_fixtures import tiny_unet

from ddpm_plus import DDPMPlusScheduler
from ddpm_plus.pipeline_ddpm_plus_posterior import (
    DDPMPlusPosteriorPipeline,
    InpaintingOperator,
    SuperResolutionOperator,
    posterior_variance_of_x0,
)

M, S, LAMBDA = 0.1, 0.15, 0.2  # S small enough that no sample reaches the output clamp at ±1


class GaussianDenoiser(ModelMixin, ConfigMixin):
    """The Bayes-optimal ε*(x_t, t) for data x_0 ~ N(mean, std² I), written from eq. 4 (differentiable)."""

    @register_to_config
    def __init__(
        self, in_channels: int = 1, out_channels: int = 1, sample_size=(2, 2), mean: float = M, std: float = S
    ):
        super().__init__()
        self.register_buffer("alphas_cumprod", DDPMPlusScheduler().alphas_cumprod_f64.clone())

    def forward(self, sample: torch.Tensor, timestep) -> UNet2DOutput:
        alpha_prod_t = self.alphas_cumprod[int(timestep)].item()
        return UNet2DOutput(sample=optimal_epsilon(alpha_prod_t, sample, self.config.mean, self.config.std**2))


def exact_posterior(A: np.ndarray, y: np.ndarray, noise_level: float = LAMBDA) -> tuple[np.ndarray, np.ndarray]:
    """p(x_0 | y) for x_0 ~ N(M 1, S² I), y = A x_0 + N(0, λ² I): Gaussian with
    Σ = (I/S² + AᵀA/λ²)⁻¹ and μ = Σ (M 1 / S² + Aᵀ y / λ²)."""
    dim = A.shape[1]
    cov = np.linalg.inv(np.eye(dim) / S**2 + A.T @ A / noise_level**2)
    return cov @ (M * np.ones(dim) / S**2 + A.T @ y / noise_level**2), cov


def expected_sampler_moments(mean: np.ndarray, cov: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact output moments of the T-step sampler when its score is that of N(mean, cov).

    The forward noise is isotropic, so each eigendirection of cov evolves independently as 1-D Gaussian data; the
    sampler's exact 1-D moments (including its discretization error) are rotated back.
    """
    scheduler = DDPMPlusScheduler(clip_sample=False)
    scheduler.set_timesteps(steps)
    eigenvalues, basis = np.linalg.eigh(cov)
    projected = basis.T @ mean
    moments = [exact_sampler_moments(scheduler, 1.0, m, v) for m, v in zip(projected, eigenvalues, strict=True)]
    out_mean = basis @ np.array([m for m, _ in moments])
    out_cov = basis @ np.diag([v for _, v in moments]) @ basis.T
    return out_mean, out_cov


def assert_moments_within_monte_carlo_error(samples: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> None:
    """Sample mean and covariance within 4 standard errors (SE of a covariance entry: √((Σ_ii Σ_jj + Σ_ij²)/n))."""
    n = samples.shape[0]
    np.testing.assert_array_less(np.abs(samples.mean(0) - mean), 4 * np.sqrt(np.diag(cov) / n))
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    np.testing.assert_array_less(np.abs(np.cov(samples, rowvar=False) - cov), 4 * se_cov)


def posterior_pipeline() -> DDPMPlusPosteriorPipeline:
    pipe = DDPMPlusPosteriorPipeline(unet=GaussianDenoiser().double(), scheduler=DDPMPlusScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample_posterior(
    y: torch.Tensor, operator, approximation: str = "gaussian", noise_level: float = LAMBDA
) -> np.ndarray:
    images = posterior_pipeline()(
        y,
        operator,
        noise_level,
        variance_approximation=approximation,
        data_variance=S**2,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    samples = (images.reshape(y.shape[0], -1) * 2 - 1).numpy()  # back to the data scale
    assert samples.min() > -1 and samples.max() < 1  # the output clamp at ±1 never acted
    return samples


@pytest.mark.parametrize("operator_name", ["inpainting", "super_resolution"])
def test_gaussian_posterior_is_reproduced(operator_name):
    """With the exact Gaussian Var[x_0|x_t], l(y|x_t) is exact, so the sampler draws p(x_0|y) up to its
    discretization error, which is computed exactly: samples (n = 6000 of a 2x2 image) match the exact output
    moments within Monte-Carlo error, and those are within 7 % of the exact posterior at T = 1000 steps."""
    n = 6000
    if operator_name == "inpainting":
        mask = torch.tensor([[[[1.0, 1.0], [0.0, 1.0]]]], dtype=torch.float64)
        operator, A = InpaintingOperator(mask), np.diag(mask.flatten().numpy())
        y_single = torch.tensor([[[[0.4, -0.2], [0.0, 0.05]]]], dtype=torch.float64)
    else:
        operator, A = SuperResolutionOperator(2), np.full((1, 4), 0.25)
        y_single = torch.tensor([[[[0.45]]]], dtype=torch.float64)
    samples = sample_posterior(y_single.expand(n, *y_single.shape[1:]).clone(), operator)
    mean, cov = exact_posterior(A, y_single.flatten().numpy())
    sampler_mean, sampler_cov = expected_sampler_moments(mean, cov, 1000)
    assert_moments_within_monte_carlo_error(samples, sampler_mean, sampler_cov)
    np.testing.assert_allclose(sampler_mean, mean, atol=1e-3)
    np.testing.assert_allclose(sampler_cov, cov, atol=0.07 * cov.max())


def test_plain_likelihood_would_be_wrong():
    """Var[x_0|x_t] = 0 ("dps") gives an overconfident posterior pulled to the measurement, where the Gaussian
    approximation is exact (λ = 0.05 makes the difference large: half the variance, the mean at y)."""
    n, noise_level = 3000, 0.05
    y = torch.full((n, 1, 2, 2), 0.4, dtype=torch.float64)
    mean, cov = exact_posterior(np.eye(4), np.full(4, 0.4), noise_level)
    sampler_mean, sampler_cov = expected_sampler_moments(mean, cov, 1000)
    exact = sample_posterior(y, "denoising", noise_level=noise_level)
    assert_moments_within_monte_carlo_error(exact, sampler_mean, sampler_cov)
    dps = sample_posterior(y, "denoising", "dps", noise_level)
    se_var, se_mean = sampler_cov[0, 0] * np.sqrt(2 / n), np.sqrt(sampler_cov[0, 0] / n)
    assert np.all(np.var(dps, axis=0) < sampler_cov[0, 0] - 20 * se_var)
    assert np.all(dps.mean(0) > sampler_mean + 20 * se_mean)


def test_posterior_variance_formula():
    for ab in (0.999, 0.5, 1e-3):
        expected = (1 - ab) * S**2 / (ab * S**2 + 1 - ab)  # Var[x_0|x_t] for Gaussian data
        assert math.isclose(posterior_variance_of_x0(ab, "gaussian", S**2), expected, rel_tol=1e-15)
        assert posterior_variance_of_x0(ab, "dps", S**2) == 0.0


def tiny_pipeline(**scheduler_kwargs) -> DDPMPlusPosteriorPipeline:
    unet = tiny_unet(learn_sigma=scheduler_kwargs.get("variance_type") == "learned_range", channels=1)
    pipe = DDPMPlusPosteriorPipeline(unet=unet, scheduler=DDPMPlusScheduler(num_train_timesteps=50, **scheduler_kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    "scheduler_kwargs",
    [{}, {"prediction_type": "v_prediction"}, {"prediction_type": "mean"}, {"variance_type": "learned_range"}],
)
def test_runs_with_real_unet_for_every_parameterization(scheduler_kwargs):
    pipe = tiny_pipeline(**scheduler_kwargs)
    y = torch.rand(2, 1, 4, 4) * 2 - 1

    def super_resolve() -> np.ndarray:
        generator = torch.Generator().manual_seed(0)
        kwargs = {"factor": 2, "num_inference_steps": 10, "output_type": "np", "generator": generator}
        return pipe(y, "super_resolution", 0.1, **kwargs).images

    out, again = super_resolve(), super_resolve()
    assert out.shape == (2, 8, 8, 1) and np.isfinite(out).all()
    np.testing.assert_array_equal(out, again)
    pil = pipe(y, "super_resolution", 0.1, factor=2, num_inference_steps=3).images
    assert len(pil) == 2 and pil[0].size == (8, 8)


def test_bad_input():
    pipe = tiny_pipeline()
    y = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match="measurement has shape"):
        pipe(torch.zeros(1, 1, 4, 4), "inpainting", 0.1, mask=torch.ones(1, 1, 8, 8), num_inference_steps=2)
    with pytest.raises(ValueError, match="λ"):
        pipe(y, "denoising", -0.1, num_inference_steps=2)
    with pytest.raises(ValueError, match="operator.*valid choices are"):
        pipe(y, "deblurring", 0.1, num_inference_steps=2)
    with pytest.raises(ValueError, match="needs noise_level > 0"):
        pipe(y, "denoising", 0.0, variance_approximation="dps", num_inference_steps=2)
    with pytest.raises(ValueError, match="needs a `mask`"):
        pipe(y, "inpainting", 0.1, num_inference_steps=2)
    with pytest.raises(ValueError, match="only 0"):
        pipe(y, "inpainting", 0.1, mask=torch.full((1, 1, 8, 8), 0.5), num_inference_steps=2)
    with pytest.raises(ValueError, match="output_type"):
        pipe(y, "denoising", 0.1, num_inference_steps=2, output_type="jpeg")


def test_community_pipeline_file_loads_and_matches(tmp_path):
    """`custom_pipeline="pipelines/ddpm_plus/pipeline_ddpm_plus_posterior.py"` loads the same class from the generated
    folder, here on a plain diffusers `DDPMPipeline` directory (its `DDPMScheduler` becomes a `DDPMPlusScheduler`)."""
    from pathlib import Path

    from diffusers import DDPMPipeline, DDPMScheduler, DiffusionPipeline

    pipe = tiny_pipeline()
    plain = DDPMPipeline(unet=pipe.unet, scheduler=DDPMScheduler.from_config(pipe.scheduler.config))
    plain.save_pretrained(tmp_path / "saved")
    module = Path(__file__).resolve().parents[1] / "pipelines" / "ddpm_plus" / "pipeline_ddpm_plus_posterior.py"
    community = DiffusionPipeline.from_pretrained(
        tmp_path / "saved", custom_pipeline=str(module), trust_remote_code=True
    )
    community.set_progress_bar_config(disable=True)
    assert type(community).__name__ == "DDPMPlusPosteriorPipeline"
    assert type(community).__module__ != DDPMPlusPosteriorPipeline.__module__  # loaded from the folder
    y = torch.rand(2, 1, 4, 4) * 2 - 1
    kwargs = dict(factor=2, num_inference_steps=5, output_type="np")
    ours = pipe(y, "super_resolution", 0.1, generator=torch.Generator().manual_seed(0), **kwargs).images
    theirs = community(y, "super_resolution", 0.1, generator=torch.Generator().manual_seed(0), **kwargs).images
    np.testing.assert_array_equal(ours, theirs)
