"""`DDPMPlusPipeline.encode` / `decode`: the probability-flow ODE in its fixed-step DDIM (η = 0) form, checked against
the exact affine map of Gaussian data (float64, written in `gaussian_reference`) and by reconstruction."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from gaussian_reference import exact_sampler_moments, optimal_epsilon
from pipeline_fixtures import SCHEDULER_CONFIG

from ddpm_plus import DDPMPlusPipeline, DDPMPlusScheduler

MEAN, VAR = 0.2, 0.3


class GaussianUNet(torch.nn.Module):
    """The Bayes-optimal ε̂ for data N(MEAN, VAR) per dimension at the integer timesteps, as a UNet stand-in."""

    def __init__(self, scheduler: DDPMPlusScheduler):
        super().__init__()
        self.prediction_type = scheduler.config.prediction_type
        self.config = SimpleNamespace(in_channels=1, out_channels=1, sample_size=4)
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.double())

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    @property
    def dtype(self) -> torch.dtype:
        return self.alphas_cumprod.dtype

    def forward(self, x: torch.Tensor, t: int) -> SimpleNamespace:
        alpha_bar = self.alphas_cumprod[t].item()
        epsilon = optimal_epsilon(alpha_bar, x, MEAN, VAR)
        x0 = (x - (1 - alpha_bar) ** 0.5 * epsilon) / alpha_bar**0.5  # eq. 4
        v = alpha_bar**0.5 * epsilon - (1 - alpha_bar) ** 0.5 * x0
        return SimpleNamespace(sample={"epsilon": epsilon, "sample": x0, "v_prediction": v}[self.prediction_type])


def gaussian_pipeline(config: dict = SCHEDULER_CONFIG, prediction_type: str = "epsilon") -> DDPMPlusPipeline:
    scheduler = DDPMPlusScheduler(**config, prediction_type=prediction_type)
    return DDPMPlusPipeline(unet=GaussianUNet(scheduler).double(), scheduler=scheduler)


@pytest.mark.parametrize(
    ("num_inference_steps", "prediction_type"), [(20, "epsilon"), (5, "epsilon"), (5, "sample"), (5, "v_prediction")]
)
def test_decode_is_the_deterministic_sampler_of_gaussian_data(num_inference_steps, prediction_type):
    pipe = gaussian_pipeline(prediction_type=prediction_type)
    noise = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pipe.scheduler.set_timesteps(num_inference_steps)
    mean, var = exact_sampler_moments(pipe.scheduler, 0.0, MEAN, VAR)  # affine: x ↦ mean + √var x
    decoded = pipe.decode(noise, num_inference_steps=num_inference_steps)
    np.testing.assert_allclose(decoded.numpy(), (mean + var**0.5 * noise).numpy(), rtol=1e-6, atol=1e-6)


def test_encode_inverts_decode_within_the_discretisation_error_that_shrinks_with_the_steps():
    pipe = gaussian_pipeline({})  # T = 1000, linear
    images = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    errors = {}
    for steps in (50, 200, 1000):
        noise = pipe.encode(images, num_inference_steps=steps)
        assert noise.shape == images.shape and noise.dtype == torch.float64
        errors[steps] = (pipe.decode(noise, num_inference_steps=steps) - images).abs().max().item()
    # first order: the error falls in proportion to the step size (0.059, 0.015, 0.0030 here)
    assert errors[50] / errors[200] > 3.5 and errors[200] / errors[1000] > 4.5 and errors[1000] < 4e-3


def reference_encode(x: np.ndarray, alphas_cumprod: np.ndarray, timesteps: list[int]) -> np.ndarray:
    """DDIM inversion written from Song et al. 2021a, eq. 12 (σ = 0) run forwards: from ᾱ_prev (1 for the data) to
    ᾱ_t with the optimal ε̂ at (x, t)."""
    previous = 1.0
    for t in sorted(timesteps):
        current = alphas_cumprod[t]
        epsilon = np.sqrt(1 - current) * (x - np.sqrt(current) * MEAN) / (current * VAR + 1 - current)
        x = (
            np.sqrt(current) * (x - np.sqrt(1 - previous) * epsilon) / np.sqrt(previous)
            + np.sqrt(1 - current) * epsilon
        )
        previous = current
    return x


@pytest.mark.parametrize("num_inference_steps", [20, 7])
def test_encode_of_gaussian_data_is_the_ddim_inversion(num_inference_steps):
    pipe = gaussian_pipeline()
    images = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * VAR**0.5
    pipe.scheduler.set_timesteps(num_inference_steps)
    alphas_cumprod = np.cumprod(1 - np.linspace(SCHEDULER_CONFIG["beta_start"], SCHEDULER_CONFIG["beta_end"], 20))
    expected = reference_encode(images.numpy() + MEAN, alphas_cumprod, pipe.scheduler.timesteps.tolist())
    noise = pipe.encode(images + MEAN, num_inference_steps=num_inference_steps)
    np.testing.assert_allclose(noise.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_encode_and_decode_check_their_inputs():
    pipe = gaussian_pipeline()
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe.encode(torch.zeros(1, 1, 4, 4), num_inference_steps=0)
    with pytest.raises(ValueError, match="NaN"):
        pipe.encode(torch.full((1, 1, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="noise must be a float tensor"):
        pipe.decode(torch.zeros(1, 4, 4))
