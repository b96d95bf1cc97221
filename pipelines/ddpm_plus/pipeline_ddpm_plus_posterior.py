# Copyright 2026 The ddpm_plus authors. Licensed under the Apache License, Version 2.0.
"""DDPMPlusPosteriorPipeline: training-free conditional generation with an unconditional DDPM.

Given a measurement y = A x_0 + n, n ~ N(0, λ² I), it samples p(x_0 | y) by adding the gradient of the
time-averaged likelihood to the model's score (docs/math.md, "Training-free conditional generation"):

    l(y | x_t) = ∫ p(y | x_0) p(x_0 | x_t) dx_0 ≈ N(y; A x̂_0(x_t), λ² I + A Var[x_0 | x_t] Aᵀ),

with x̂_0 = E[x_0 | x_t] from the network (Tweedie's formula) and the gradient taken by autograd through the network.
The conditional score ∇log p_t(x_t | y) = ∇log p_t(x_t) + ∇log l(y | x_t) becomes, in ε terms,
ε̂_y = ε̂ - √(1-ᾱ_t) · guidance_scale · ∇_{x_t} log l(y | x_t); each step is then an ordinary scheduler step.

It builds on `DDPMPlusPipeline` (same components, checks and outputs) and imports only torch, diffusers and the
sibling pipeline, scheduler and likelihood modules.
"""

import math

import torch
import torch.nn.functional as F
from diffusers import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

# diffusers accepts one pipeline class in a pipeline file's namespace, so the base class is reached through its
# module; and when it loads this file from a local folder (a saved directory, or `custom_pipeline=` naming this file
# in the community folder) it copies next to it only the modules named here in `from .module import` lines (not what
# those import), so the base pipeline's sibling modules are named here as well.
from . import pipeline_ddpm_plus
from .likelihood import variational_bound  # noqa: F401
from .pipeline_ddpm_plus import LikelihoodOutput  # noqa: F401
from .scheduling_ddpm_plus import check_choice

VARIANCE_APPROXIMATIONS = ("gaussian", "dps")
OPERATORS = ("identity", "denoising", "inpainting", "super_resolution")


class LinearOperator:
    """A linear measurement operator A with A Aᵀ = `gram_scale` · I (true for all built-ins).

    Subclass it, or pass any object with `__call__(x) -> y` and a float `gram_scale`, for other operators whose
    rows are orthogonal with equal norms.
    """

    gram_scale: float = 1.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class IdentityOperator(LinearOperator):
    """A = I: denoising."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x


class InpaintingOperator(LinearOperator):
    """A = diag(mask): observed pixels where `mask` is 1, the rest set to 0 (and ignored by the likelihood)."""

    def __init__(self, mask: torch.Tensor):
        if not torch.all((mask == 0) | (mask == 1)):
            raise ValueError("the inpainting mask must contain only 0 (missing) and 1 (observed).")
        self.mask = mask

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask.to(device=x.device, dtype=x.dtype)


class SuperResolutionOperator(LinearOperator):
    """A = k×k average pooling: a low-resolution image; A Aᵀ = I / k²."""

    def __init__(self, factor: int):
        if factor < 1:
            raise ValueError(f"the super-resolution factor must be a positive integer, got {factor}.")
        self.factor = factor
        self.gram_scale = 1.0 / factor**2

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by the factor {self.factor}.")
        return F.avg_pool2d(x, self.factor)


def make_operator(name: str, *, mask: torch.Tensor | None = None, factor: int | None = None) -> LinearOperator:
    """A built-in operator by name: "identity"/"denoising", "inpainting" (needs `mask`), "super_resolution"
    (needs `factor`)."""
    if name in ("identity", "denoising"):
        return IdentityOperator()
    if name == "inpainting":
        if mask is None:
            raise ValueError("the inpainting operator needs a `mask`.")
        return InpaintingOperator(mask)
    if name == "super_resolution":
        if factor is None:
            raise ValueError("the super-resolution operator needs a `factor`.")
        return SuperResolutionOperator(factor)
    check_choice("operator", name, OPERATORS)
    raise AssertionError("unreachable")


def posterior_variance_of_x0(alpha_prod_t: float, approximation: str, data_variance: float) -> float:
    """Var[x_0 | x_t] per dimension.

    "gaussian": exact for data ~ N(m, s² I): (1-ᾱ_t) s² / (ᾱ_t s² + 1 - ᾱ_t), with s² = `data_variance`;
    "dps": 0 (only the measurement noise λ² is kept, as in diffusion posterior sampling).
    """
    if approximation == "gaussian":
        return (1 - alpha_prod_t) * data_variance / (alpha_prod_t * data_variance + 1 - alpha_prod_t)
    check_choice("variance approximation", approximation, VARIANCE_APPROXIMATIONS)
    return 0.0


class DDPMPlusPosteriorPipeline(pipeline_ddpm_plus.DDPMPlusPipeline):
    """Posterior sampling p(x_0 | y) for linear inverse problems with an unconditional DDPM.

    Args:
        unet: the unconditional denoiser (a `UNet2DModel`, or any diffusers model with the same config fields whose
            forward returns an object with `.sample`); learned-variance models are supported.
        scheduler: a `DDPMPlusScheduler` (any prediction type).
    """

    _code_file = "pipeline_ddpm_plus_posterior.py"

    @torch.no_grad()
    def __call__(
        self,
        measurement: torch.Tensor,
        operator: str | LinearOperator = "identity",
        noise_level: float = 0.05,
        *,
        mask: torch.Tensor | None = None,
        factor: int | None = None,
        variance_approximation: str = "gaussian",
        data_variance: float = 0.25,
        guidance_scale: float = 1.0,
        num_inference_steps: int = 1000,
        stochasticity: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Sample one image per measurement.

        Args:
            measurement: y, shaped like A(x) for a batch of images (B, ...), on the [-1, 1] scale.
            operator: "identity"/"denoising", "inpainting" (with `mask`), "super_resolution" (with `factor`), or a
                `LinearOperator`.
            noise_level: λ ≥ 0, the standard deviation of the measurement noise.
            variance_approximation: how Var[x_0 | x_t] enters l(y | x_t): "gaussian" (with `data_variance`) or
                "dps" (λ² only; then λ must be > 0).
            data_variance: s², the per-dimension data variance of the "gaussian" approximation.
            guidance_scale: multiplies ∇log l(y | x_t); 1 is the posterior.
            num_inference_steps, generator, output_type, return_dict: as in `DDPMPlusPipeline.__call__`.
            stochasticity: the reverse-SDE noise level η of `DDPMPlusScheduler.step` (None: ancestral DDPM).
        """
        if not isinstance(operator, LinearOperator):
            operator = make_operator(operator, mask=mask, factor=factor)
        check_guidance_arguments(noise_level, variance_approximation, data_variance)
        batch_size = measurement.shape[0]
        generator = self._check_sampling_arguments(batch_size, generator, num_inference_steps, output_type)
        self._check_components()
        shape = (batch_size, self.unet.config.in_channels, *self._image_size())
        expected = tuple(operator(torch.zeros(shape)).shape)
        if tuple(measurement.shape) != expected:
            raise ValueError(f"measurement has shape {tuple(measurement.shape)}, but the operator gives {expected}.")

        device = self._execution_device
        measurement = measurement.to(device=device, dtype=self.unet.dtype)
        image = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_output = self._guided_output(
                image, t, measurement, operator, noise_level, variance_approximation, data_variance, guidance_scale
            )
            step = self.scheduler.step(model_output, t, image, generator=generator, stochasticity=stochasticity)
            image = step.prev_sample
        return self._output(image, output_type, return_dict)

    def _guided_output(
        self,
        image: torch.Tensor,
        t: torch.Tensor,
        measurement: torch.Tensor,
        operator: LinearOperator,
        noise_level: float,
        variance_approximation: str,
        data_variance: float,
        guidance_scale: float,
    ) -> torch.Tensor:
        """The network output with its ε part replaced by ε̂_y = ε̂ - √(1-ᾱ_t) s ∇log l(y | x_t)."""
        scheduler = self.scheduler
        channels = image.shape[1]
        with torch.enable_grad():
            x_t = image.detach().requires_grad_(True)
            output = self.unet(x_t, t).sample
            mean_output, variance_output = output[:, :channels], output[:, channels:]
            x0 = scheduler.convert_prediction(mean_output, x_t, t, to="sample")
            alpha_prod_t = float(scheduler.alphas_cumprod_f64[int(t)])
            variance = noise_level**2 + operator.gram_scale * posterior_variance_of_x0(
                alpha_prod_t, variance_approximation, data_variance
            )
            residual = measurement - operator(x0)
            log_likelihood = -0.5 * (residual**2).sum() / variance  # log N(y; A x̂_0, variance · I) + const
            (grad,) = torch.autograd.grad(log_likelihood, x_t)
        with torch.no_grad():
            eps = scheduler.convert_prediction(mean_output.detach(), image, t, to="epsilon")
            eps = eps - math.sqrt(1 - alpha_prod_t) * guidance_scale * grad
            guided = scheduler.convert_prediction(
                eps, image, t, to=scheduler.config.prediction_type, prediction_type="epsilon"
            )
            return torch.cat([guided, variance_output.detach()], dim=1)


def check_guidance_arguments(noise_level: float, variance_approximation: str, data_variance: float) -> None:
    """Clear errors for bad guidance arguments, before any sampling."""
    if noise_level < 0:
        raise ValueError(f"noise_level (λ) must be ≥ 0, got {noise_level}.")
    check_choice("variance approximation", variance_approximation, VARIANCE_APPROXIMATIONS)
    if variance_approximation == "dps" and noise_level == 0:
        raise ValueError("variance_approximation='dps' keeps only λ²; it needs noise_level > 0.")
    if data_variance <= 0:
        raise ValueError(f"data_variance must be > 0, got {data_variance}.")
