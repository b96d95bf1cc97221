"""Bits/dim of DDPM models: the exact variational bound over all T steps, and a fast unbiased estimate of it.

The bound (Ho et al. 2020, eq. 5) of an image x_0, in bits/dim, is

    L = L_T + Σ_{t=2}^{T} L_{t-1} + L_0
      = prior KL(q(x_T|x_0) ‖ N(0, I)) + Σ_t KL(q(x_{t-1}|x_t,x_0) ‖ p_θ(x_{t-1}|x_t)) + decoder -log p_θ(x_0|x_1),

each term taken with one draw x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε (eq. 4), exactly as improved-diffusion's
`calc_bpd_loop`. Timesteps here are 0-based as in diffusers: t = 0 is the decoder L_0 (eq. 13), t ≥ 1 are the KL
terms. Every term comes from `DDPMPlusScheduler`'s public math (`q_sample`, `p_mean_variance`,
`vb_terms_from_moments`, `prior_bpd`); this module only organises the work:

* `variational_bound`: all T terms per image, many (image, timestep) pairs per network call, chunked to
  `max_batch_size`. The network runs in its own dtype (float32 or float64; float16/bfloat16 models are refused,
  call `.float()` first) and the bound is computed in float64 on the upcast outputs.
* `estimate_bound`: the prior and the decoder term exactly, and the sum of the T-1 KL terms by stratified
  importance sampling of timesteps, with an honest standard error and confidence interval per image and for the
  data-set mean, at a small fraction of the network evaluations (`schedule_profile` and `pilot_profile` shape the
  timestep proposal).
* `evaluate_terms`: the engine underneath, the terms at any plan of (image, timestep) pairs.

Like the scheduler, this file imports only torch, numpy, tqdm and its sibling scheduler module, so it travels with
saved pipeline directories: `DDPMPlusPipeline.log_likelihood` calls `variational_bound`.

The noise is a function of (image, timestep) only, so results are reproducible, independent of the chunking, and
shared between the exact bound and the estimator (common random numbers): each image first draws a noise key k
from the generator (`torch.randint(0, 2**63 - 1, (B,), generator=generator)`, or `(1,)` from each of a list of
per-image generators), and ε for timestep t is `numpy.random.Generator(numpy.random.Philox(key=k,
counter=[0, t, 0, 0])).standard_normal(image.shape)` (float64). The estimator then estimates exactly the value that
`variational_bound` computes with the same generator(s).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from .scheduling_ddpm_plus import DDPMPlusScheduler, check_8bit_data

GeneratorLike = torch.Generator | Sequence[torch.Generator] | None

DEFAULT_MAX_BATCH_SIZE = 128
"""(image, timestep) pairs per network call unless told otherwise."""


# ---------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class BoundTerms:
    """Bound terms at a plan of (image, timestep) pairs; every field has the plan's shape (B, K), float64, CPU.

    Attributes:
        terms_bpd: the term at each pair in bits/dim: the KL term for t ≥ 1, the decoder NLL for t = 0.
        x0_mse: mean over dimensions of (x̂_0 - x_0)², the distortion of the x_0 estimate.
        eps_mse: mean over dimensions of (ε̂ - ε)², ε̂ derived from x̂_0.
    """

    terms_bpd: torch.Tensor
    x0_mse: torch.Tensor
    eps_mse: torch.Tensor


_Results = TypeVar("_Results", bound="_PerImageResults")


class _PerImageResults:
    """Dataclass base: per-image tensor fields (batch first) and a `num_evaluations` count, joined over batches."""

    @classmethod
    def concat(cls: type[_Results], parts: Sequence[_Results]) -> _Results:
        """Join the results of several batches of images into one."""
        per_image = {
            field.name: torch.cat([getattr(part, field.name) for part in parts])
            for field in fields(cls)
            if field.name != "num_evaluations"
        }
        return cls(**per_image, num_evaluations=sum(part.num_evaluations for part in parts))


@dataclass
class BoundResult(_PerImageResults):
    """The exact variational bound (eq. 5) per image, in bits/dim; tensors are float64 on the CPU.

    Attributes:
        total_bpd: (B,) prior + Σ_{t≥1} KL terms + decoder.
        prior_bpd: (B,) L_T = KL(q(x_T | x_0) ‖ N(0, I)).
        decoder_bpd: (B,) L_0 = -log p_θ(x_0 | x_1), the discretized decoder (eq. 13); equal to `terms_bpd[:, 0]`.
        terms_bpd: (B, T) the term of each 0-based timestep t (index 0: decoder, index t ≥ 1: KL term). Note that
            improved-diffusion's `calc_bpd_loop` stacks its `vb` in the reverse order (t = T-1 first).
        x0_mse: (B, T) mean squared error of x̂_0 at each t: the distortion of the paper's rate/distortion curve.
        eps_mse: (B, T) mean squared error of ε̂ at each t.
        num_evaluations: network evaluations spent (one per image and timestep).
    """

    total_bpd: torch.Tensor
    prior_bpd: torch.Tensor
    decoder_bpd: torch.Tensor
    terms_bpd: torch.Tensor
    x0_mse: torch.Tensor
    eps_mse: torch.Tensor
    num_evaluations: int

    def rate_bpd(self) -> torch.Tensor:
        """(B, T) rate of the paper's rate/distortion curve (sec. 4.3): the prior plus the KL terms at timesteps
        ≥ max(t, 1), i.e. the bits received once the reverse process has reached x_t; pair with `x0_mse`."""
        kl_terms = torch.cat([torch.zeros_like(self.terms_bpd[:, :1]), self.terms_bpd[:, 1:]], dim=1)
        return self.prior_bpd[:, None] + kl_terms.flip(1).cumsum(1).flip(1)


@dataclass
class BoundEstimate(_PerImageResults):
    """A Monte-Carlo estimate of the variational bound per image (bits/dim; float64 tensors on the CPU).

    The estimand is the exact bound of each image for the same noise (see `estimate_bound`). Variances come from
    stratified sampling with ≥ 2 draws per stratum; intervals use Student's t with Welch-Satterthwaite degrees of
    freedom.

    Attributes:
        total_bpd: (B,) estimate of the total bound: prior (exact) + decoder (exact) + Σ KL (estimated).
        standard_error: (B,) standard error of `total_bpd`.
        degrees_of_freedom: (B,) effective degrees of freedom of the variance estimate (inf when it is exactly 0).
        prior_bpd: (B,) the prior term L_T.
        decoder_bpd: (B,) the decoder term L_0.
        kl_bpd: (B,) the estimate of Σ_{t≥1} KL terms.
        num_evaluations: network evaluations spent on these images.
    """

    total_bpd: torch.Tensor
    standard_error: torch.Tensor
    degrees_of_freedom: torch.Tensor
    prior_bpd: torch.Tensor
    decoder_bpd: torch.Tensor
    kl_bpd: torch.Tensor
    num_evaluations: int

    def interval(self, confidence: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image two-sided confidence interval (low, high) of the exact bound."""
        half_width = student_t_quantile(confidence, self.degrees_of_freedom) * self.standard_error
        return self.total_bpd - half_width, self.total_bpd + half_width

    @property
    def mean_bpd(self) -> float:
        """The data-set mean of the per-image estimates."""
        return self.total_bpd.mean().item()

    @property
    def mean_standard_error(self) -> float:
        """Standard error of `mean_bpd` as an estimate of the mean exact bound of these images."""
        return (self.standard_error.square().sum().sqrt() / len(self.total_bpd)).item()

    def mean_interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """Confidence interval of the mean exact bound of these images (the timestep sampling error)."""
        variances = self.standard_error.square()
        dof = welch_satterthwaite_dof(variances, self.degrees_of_freedom)
        half_width = student_t_quantile(confidence, dof) * self.mean_standard_error
        return self.mean_bpd - half_width.item(), self.mean_bpd + half_width.item()


def welch_satterthwaite_dof(variances: torch.Tensor, dofs: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Effective degrees of freedom of a sum of independent variance estimates: (Σ v)² / Σ (v² / ν).

    Parts with v = 0 contribute nothing; a sum that is exactly 0 has infinite degrees of freedom.
    """
    variances = variances.double()
    dofs = torch.as_tensor(dofs, dtype=torch.float64).expand_as(variances)
    ratio = torch.where(variances > 0, variances.square() / dofs, torch.zeros_like(variances))
    total = variances.sum() if dim is None else variances.sum(dim)
    spread = ratio.sum() if dim is None else ratio.sum(dim)
    return torch.where(spread > 0, total.square() / spread, torch.full_like(total, math.inf))


def student_t_quantile(confidence: float, dof: torch.Tensor) -> torch.Tensor:
    """The (1 + confidence) / 2 quantile of Student's t with `dof` ≥ 1 degrees of freedom (normal where dof = inf).

    Relative error below 1e-6. For dof < 10⁴ the two-sided probability P(|T| < √ν tan θ) = (2 / B(ν/2, 1/2))
    ∫_0^θ cos^{ν-1} φ dφ (the substitution x = √ν tan φ in the t density) is integrated by Gauss-Legendre quadrature
    and solved for θ by bisection; above, the Cornish-Fisher expansion of the quantile in 1/ν is used.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}.")
    dof = torch.as_tensor(dof, dtype=torch.float64).cpu()
    if torch.isnan(dof).any() or (dof < 1).any():
        raise ValueError("degrees of freedom must be at least 1.")
    z = math.sqrt(2.0) * torch.special.erfinv(torch.tensor(confidence, dtype=torch.float64))  # P(|Z| < z) = c
    quadrature = _t_quantile_by_quadrature(confidence, dof)
    return torch.where(dof < _T_QUADRATURE_LIMIT, quadrature, _t_quantile_expansion(z, dof))


_T_QUADRATURE_LIMIT = 1e4
_LEGENDRE_NODES, _LEGENDRE_WEIGHTS = (torch.from_numpy(array) for array in np.polynomial.legendre.leggauss(96))


def _t_quantile_by_quadrature(confidence: float, dof: torch.Tensor) -> torch.Tensor:
    """√ν tan θ with P(|T| < √ν tan θ) = confidence; ν clamped to the quadrature's range."""
    nu = dof.clamp(max=_T_QUADRATURE_LIMIT)[..., None]
    log_normalizer = math.log(2 / math.sqrt(math.pi)) + torch.lgamma((nu + 1) / 2) - torch.lgamma(nu / 2)
    nodes, weights = (_LEGENDRE_NODES + 1) / 2, _LEGENDRE_WEIGHTS / 2  # Gauss-Legendre rule on [0, 1]

    def central_probability(theta: torch.Tensor) -> torch.Tensor:
        log_cos = 0.5 * torch.log1p(-torch.sin(theta[..., None] * nodes).square())
        return theta * (weights * torch.exp((nu - 1) * log_cos + log_normalizer)).sum(-1)

    low, high = torch.zeros_like(dof), torch.full_like(dof, math.pi / 2)
    for _ in range(60):  # bisection to float64 resolution of θ ∈ (0, π/2)
        middle = (low + high) / 2
        below = central_probability(middle) < confidence
        low, high = torch.where(below, middle, low), torch.where(below, high, middle)
    return nu[..., 0].sqrt() * torch.tan((low + high) / 2)


def _t_quantile_expansion(z: torch.Tensor, dof: torch.Tensor) -> torch.Tensor:
    """Cornish-Fisher expansion of the t quantile around the normal quantile z, to O(1/ν⁴) (z where ν = inf)."""
    inverse = 1 / dof
    first = (z**3 + z) / 4
    second = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    third = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + inverse * (first + inverse * (second + inverse * third))


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Network:
    """A denoiser `forward(x_t, t)` with the dtype and device of its inputs, returning float64 outputs."""

    forward: Callable[..., Any]
    dtype: torch.dtype
    device: torch.device
    in_channels: int | None

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        output = self.forward(x_t.to(self.dtype), t.to(self.device))
        output = _output_tensor(output)
        if output.dtype not in (torch.float32, torch.float64):
            raise ValueError(
                f"the model returned {output.dtype}; the bound needs float32 or float64 outputs "
                "(run the model in float32: model.float())."
            )
        if output.shape[0] != x_t.shape[0] or output.shape[2:] != x_t.shape[2:]:
            raise ValueError(
                f"the model output has shape {tuple(output.shape)} for an input of shape {tuple(x_t.shape)}; "
                "batch size and spatial size must match."
            )
        if not torch.isfinite(output).all():
            raise ValueError("the model output contains NaN or infinite values.")
        return output.to(device=x_t.device, dtype=torch.float64)  # offloading hooks may return it elsewhere


def _output_tensor(output: Any) -> torch.Tensor:
    """The tensor of a model output: a tensor, an object with `.sample` (UNet2DOutput) or a tuple's first item."""
    if hasattr(output, "sample"):
        output = output.sample
    elif isinstance(output, tuple | list):
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise ValueError(f"the model must return a tensor (or an output with .sample), got {type(output).__name__}.")
    return output


def _resolve(model: Any, scheduler: Any | None, x0: torch.Tensor) -> tuple[_Network, DDPMPlusScheduler]:
    """The network and the DDPMPlusScheduler behind a UNet, a pipeline (`.unet`, `.scheduler`) or a callable."""
    if scheduler is None:
        scheduler = getattr(model, "scheduler", None)
        if scheduler is None:
            raise ValueError("pass a scheduler: the model has none (only pipelines carry their scheduler).")
    if not isinstance(scheduler, DDPMPlusScheduler):
        if not hasattr(scheduler, "config") or "num_train_timesteps" not in scheduler.config:
            raise ValueError(f"scheduler must be a DDPM-style scheduler, got {type(scheduler).__name__}.")
        scheduler = DDPMPlusScheduler.from_config(scheduler.config)
    network = getattr(model, "unet", model)
    if not callable(network):
        raise ValueError(f"model must be a UNet, a pipeline with .unet or a callable, got {type(model).__name__}.")
    dtype, device = _dtype_and_device(network, x0)
    config = getattr(network, "config", None)
    in_channels = getattr(config, "in_channels", None) if config is not None else None
    return _Network(network, dtype, device, in_channels), scheduler


def _dtype_and_device(network: Any, x0: torch.Tensor) -> tuple[torch.dtype, torch.device]:
    """Input dtype and device of a module (from its first floating tensor), else float32 on x0's device."""
    if isinstance(network, torch.nn.Module):
        tensors = [tensor for tensor in (*network.parameters(), *network.buffers()) if tensor.is_floating_point()]
        if tensors:
            dtype = tensors[0].dtype
            if dtype not in (torch.float32, torch.float64):
                raise ValueError(
                    f"the model runs in {dtype}; the variational bound is computed only for float32 or float64 "
                    "models (half precision changes the likelihood): call model.float() first."
                )
            return dtype, tensors[0].device
    return torch.float32, x0.device


@contextlib.contextmanager
def _eval_mode(network: _Network) -> Iterator[None]:
    """Switch a module to eval mode (no dropout) for the evaluation and restore its mode afterwards."""
    module = network.forward if isinstance(network.forward, torch.nn.Module) else None
    was_training = module is not None and module.training
    if was_training:
        module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            module.train()


# ---------------------------------------------------------------------------------------------------------------
# Input checks and random draws
# ---------------------------------------------------------------------------------------------------------------


def _check_batch(x0: Any) -> None:
    """ValueError unless x0 is a non-empty 4-D tensor (B, C, H, W)."""
    if not isinstance(x0, torch.Tensor) or x0.ndim != 4:
        shape = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise ValueError(f"images must be a 4-D tensor (B, C, H, W), got {shape}.")
    if x0.shape[0] == 0:
        raise ValueError("images must hold at least one image.")


def _check_images(x0: torch.Tensor, network: _Network, needs_8bit: bool) -> None:
    """ValueError unless x0 is a finite float batch fitting the model (and 8-bit data when needed)."""
    if network.in_channels is not None and x0.shape[1] != network.in_channels:
        raise ValueError(f"the model takes {network.in_channels} channels, the images have {x0.shape[1]}.")
    if needs_8bit:
        check_8bit_data(x0, "images")
    elif x0.dtype not in (torch.float32, torch.float64) or not torch.isfinite(x0).all():
        raise ValueError("images must be finite float32 or float64 values.")


def _check_generator(generator: GeneratorLike, batch_size: int) -> GeneratorLike:
    if isinstance(generator, Sequence):
        generator = list(generator)
        if len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for {batch_size} images; pass one per image.")
    return generator


def _uniforms(generator: GeneratorLike, batch_size: int, shape: tuple[int, ...]) -> torch.Tensor:
    """U[0, 1) draws of shape (batch_size, *shape) on the CPU, per image when given one generator per image."""
    if isinstance(generator, list):
        return torch.cat([torch.rand((1, *shape), generator=item, dtype=torch.float64) for item in generator])
    return torch.rand((batch_size, *shape), generator=generator, dtype=torch.float64)


_MAX_KEY = 2**63 - 1


def _noise_keys(generator: GeneratorLike, batch_size: int) -> list[int]:
    """One noise key per image: the first draw of its generator (or B draws of one generator)."""
    if isinstance(generator, list):
        keys = torch.cat([torch.randint(0, _MAX_KEY, (1,), generator=item) for item in generator])
    else:
        keys = torch.randint(0, _MAX_KEY, (batch_size,), generator=generator)
    return keys.tolist()


def _pair_noise(keys: Sequence[int], shape: torch.Size) -> Callable[[int, int], np.ndarray]:
    """ε of (image i, timestep t): standard normals of the image's shape from Philox keyed by (k_i, t)."""

    def noise(image: int, timestep: int) -> np.ndarray:
        bits = np.random.Philox(key=keys[image], counter=[0, timestep, 0, 0])
        return np.random.Generator(bits).standard_normal(tuple(shape[1:]))

    return noise


# ---------------------------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------------------------


def _prepare(
    model: Any, scheduler: Any | None, x0: Any, generator: GeneratorLike, max_batch_size: int
) -> tuple[_Network, DDPMPlusScheduler, GeneratorLike]:
    """Check the common arguments; returns the network, the DDPMPlusScheduler and the checked generator(s)."""
    _check_batch(x0)
    network, scheduler = _resolve(model, scheduler, x0)
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be positive, got {max_batch_size}.")
    return network, scheduler, _check_generator(generator, x0.shape[0])


def evaluate_terms(
    model: Any,
    x0: torch.Tensor,
    timesteps: torch.Tensor | Sequence[int],
    scheduler: DDPMPlusScheduler | None = None,
    *,
    generator: GeneratorLike = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    clip_denoised: bool = False,
    progress: bool = True,
) -> BoundTerms:
    """Bound terms at a plan of (image, timestep) pairs, `max_batch_size` pairs per network call.

    Args:
        model: a `UNet2DModel`, a pipeline with `.unet` and `.scheduler`, or a callable `model(x_t, t)` returning a
            tensor or an object with `.sample`. Its output is what the scheduler's prediction and variance types
            expect (doubled channels for learned variances). Modules run in eval mode (restored afterwards) and
            get inputs in their parameters' dtype; other callables get float32 inputs and are called as they are.
        x0: images (B, C, H, W). 8-bit data in [-1, 1] when the plan holds t = 0 (the discretized decoder);
            the KL terms (t ≥ 1) accept any real data.
        timesteps: 0-based timesteps, (K,) for every image or (B, K) per image.
        scheduler: a `DDPMPlusScheduler` (a DDPM scheduler config is converted); default: the pipeline's.
        generator: a CPU `torch.Generator`, one per image, or None for torch's global generator: the source of the
            images' noise keys (see the module docstring). The noise depends on (image, t) only: a timestep that
            appears twice for an image gives the same term.
        max_batch_size: (image, timestep) pairs per network call; the results do not depend on it.
        clip_denoised: clip x̂_0 to [-1, 1] before forming the reverse mean (improved-diffusion's option).
        progress: show a tqdm progress bar.
    """
    network, scheduler, generator = _prepare(model, scheduler, x0, generator, max_batch_size)
    plan = _timestep_plan(timesteps, x0.shape[0], scheduler.config.num_train_timesteps)
    _check_images(x0, network, needs_8bit=bool((plan == 0).any()))
    keys = _noise_keys(generator, x0.shape[0])
    return _evaluate_plan(network, scheduler, x0, plan, keys, max_batch_size, clip_denoised, progress)


def _timestep_plan(timesteps: torch.Tensor | Sequence[int], batch_size: int, num_steps: int) -> torch.Tensor:
    """The plan as a (B, K) CPU long tensor, checked against 0..T-1."""
    plan = torch.as_tensor(timesteps).to("cpu")
    if plan.is_floating_point() or plan.is_complex():
        raise ValueError(f"timesteps must be integers, got {plan.dtype}.")
    plan = plan.long()
    if plan.ndim == 1:
        plan = plan.expand(batch_size, -1)
    if plan.ndim != 2 or plan.shape[0] != batch_size or plan.shape[1] == 0:
        raise ValueError(f"timesteps must have shape (K,) or ({batch_size}, K) with K ≥ 1, got {tuple(plan.shape)}.")
    if plan.min() < 0 or plan.max() >= num_steps:
        raise ValueError(f"timesteps must lie in 0..{num_steps - 1}, got values in [{plan.min()}, {plan.max()}].")
    return plan


def _evaluate_plan(
    network: _Network,
    scheduler: DDPMPlusScheduler,
    x0: torch.Tensor,
    plan: torch.Tensor,
    keys: Sequence[int],
    max_batch_size: int,
    clip_denoised: bool,
    progress: bool,
) -> BoundTerms:
    """The pairs of the plan in column-major order (p = k·B + i), chunked; returns (B, K) float64 results."""
    batch, columns = plan.shape
    num_pairs = batch * columns
    images = x0.to(network.device, torch.float64)
    flat_plan = plan.t().reshape(-1)
    noise = _pair_noise(keys, x0.shape)
    results = torch.empty(3, num_pairs, dtype=torch.float64)
    starts = range(0, num_pairs, max_batch_size)
    with _eval_mode(network):
        for start in tqdm(starts, desc="bits/dim", unit="call", disable=not progress, leave=False):
            rows = torch.arange(start, min(start + max_batch_size, num_pairs)) % batch
            timesteps = flat_plan[start : start + len(rows)]
            pair_noise = np.stack([noise(i, t) for i, t in zip(rows.tolist(), timesteps.tolist(), strict=True)])
            results[:, start : start + len(rows)] = _evaluate_pairs(
                network,
                scheduler,
                images[rows.to(network.device)],
                torch.from_numpy(pair_noise).to(network.device),
                timesteps,
                clip_denoised,
            )
    terms, x0_mse, eps_mse = (values.reshape(columns, batch).t().contiguous() for values in results)
    return BoundTerms(terms, x0_mse, eps_mse)


def _evaluate_pairs(
    network: _Network,
    scheduler: DDPMPlusScheduler,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    clip_denoised: bool,
) -> torch.Tensor:
    """(3, N) bound term (bits/dim), x̂_0 MSE and ε̂ MSE of N (image, timestep) pairs in one network call."""
    x_t = scheduler.q_sample(x0, noise, t)  # eq. 4, float64
    moments = scheduler.p_mean_variance(network(x_t, t), x_t, t, clip_denoised=clip_denoised)
    terms = scheduler.vb_terms_from_moments(x0, x_t, t, moments.mean, moments.log_variance)  # eq. 5, 13
    pred_x0 = moments.pred_original_sample
    pred_noise = scheduler.convert_model_output(pred_x0, x_t, t, to="epsilon", prediction_type="sample")
    x0_mse = (pred_x0 - x0).square().flatten(1).mean(1)
    eps_mse = (pred_noise - noise).square().flatten(1).mean(1)
    return torch.stack([terms, x0_mse, eps_mse]).cpu()


def variational_bound(
    model: Any,
    x0: torch.Tensor,
    scheduler: DDPMPlusScheduler | None = None,
    *,
    generator: GeneratorLike = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    clip_denoised: bool = False,
    progress: bool = True,
) -> BoundResult:
    """The exact variational bound (eq. 5) in bits/dim of each image, over all T timesteps.

    Same definition as improved-diffusion's `calc_bpd_loop`: one noise draw per image and timestep (keyed by the
    image's noise key and t, see the module docstring), the KL term for t ≥ 1, the discretized decoder for t = 0,
    plus the prior L_T. The decoder is exact (log-CDF based) where the reference uses a tanh approximation of the
    normal CDF. The total is one draw of the expected bound E_ε[L]; `estimate_bound` with the same generator(s)
    estimates this very value.

    Args:
        model: a `UNet2DModel`, a pipeline with `.unet` and `.scheduler`, or a callable `model(x_t, t)`.
            float16/bfloat16 modules are refused: the bound is defined for the float32 (or float64) network.
        x0: 8-bit images (B, C, H, W) in [-1, 1] (values k/127.5 - 1).
        scheduler: a `DDPMPlusScheduler` (a DDPM scheduler config is converted); default: the pipeline's.
        generator, max_batch_size, clip_denoised, progress: as in `evaluate_terms`. The network sees B·T inputs in
            chunks of `max_batch_size`; the results do not depend on the chunking.
    """
    network, scheduler, generator = _prepare(model, scheduler, x0, generator, max_batch_size)
    _check_images(x0, network, needs_8bit=True)
    num_steps = scheduler.config.num_train_timesteps
    plan = torch.arange(num_steps).expand(x0.shape[0], -1)
    keys = _noise_keys(generator, x0.shape[0])
    terms = _evaluate_plan(network, scheduler, x0, plan, keys, max_batch_size, clip_denoised, progress)
    prior_bpd = scheduler.prior_bpd(x0.cpu().double())
    return BoundResult(
        total_bpd=prior_bpd + terms.terms_bpd.sum(1),
        prior_bpd=prior_bpd,
        decoder_bpd=terms.terms_bpd[:, 0].clone(),
        terms_bpd=terms.terms_bpd,
        x0_mse=terms.x0_mse,
        eps_mse=terms.eps_mse,
        num_evaluations=plan.numel(),
    )


# ---------------------------------------------------------------------------------------------------------------
# The fast estimator
# ---------------------------------------------------------------------------------------------------------------

_UNIFORM_SHARE = 0.05
"""Share of the proposal spread uniformly over t = 1..T-1, so that no timestep has probability 0."""


@dataclass
class TimestepStrata:
    """A partition of the KL timesteps 1..T-1 into contiguous strata, with a proposal distribution over them.

    Attributes:
        probabilities: (T,) proposal p_t over 1..T-1 (index 0, the decoder, holds 0), float64, sums to 1.
        bounds: (S + 1,) timestep boundaries: stratum s holds bounds[s] ≤ t < bounds[s+1].
    """

    probabilities: torch.Tensor
    bounds: torch.Tensor

    @property
    def num_strata(self) -> int:
        return len(self.bounds) - 1

    def sample(self, uniforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps t ~ p_t / P_s within each stratum s (inverse CDF) and their weights P_s / p_t.

        Args:
            uniforms: (..., S, m) U[0, 1) draws, m per stratum.
        Returns:
            (timesteps long, weights float64), both shaped like `uniforms`, with E[w · f(t)] = Σ_{t∈s} f(t).
        """
        cdf = self.probabilities.cumsum(0)
        low, high = cdf[self.bounds[:-1] - 1, None], cdf[self.bounds[1:] - 1, None]
        timesteps = torch.searchsorted(cdf, (low + uniforms * (high - low)).contiguous(), right=True)
        first, last = self.bounds[:-1, None], self.bounds[1:, None] - 1
        timesteps = torch.maximum(torch.minimum(timesteps, last), first)  # guards against rounding at the edges
        weights = (high - low) / self.probabilities[timesteps]
        return timesteps, weights


def schedule_profile(scheduler: DDPMPlusScheduler) -> torch.Tensor:
    """(T,) the weight of eq. 12, w_t = β_t² / (2 β̃_t α_t (1 - ᾱ_t)) = β_t / (2 α_t (1 - ᾱ_{t-1})) for t ≥ 1.

    With σ_t² = β̃_t, KL_t = w_t · E‖ε - ε̂‖² / D per dimension, so w_t is the shape of the KL profile of a model whose
    ε error does not depend on t: a proposal that needs no network evaluation (index 0 holds 0).
    """
    betas = scheduler.betas_f64
    weights = betas[1:] / (2 * (1 - betas[1:]) * (1 - scheduler.alphas_cumprod_prev_f64[1:]))
    finite = torch.isfinite(weights)  # β_t = 1 (zero terminal SNR) has α_t = 0: give it the largest finite weight
    weights = torch.where(finite, weights, weights[finite].max() if finite.any() else torch.ones_like(weights))
    return torch.cat([torch.zeros(1, dtype=torch.float64), weights])


def make_strata(profile: torch.Tensor | Sequence[float], num_steps: int, num_strata: int) -> TimestepStrata:
    """min(num_strata, T - 1) contiguous strata of (nearly) equal proposal mass over the KL timesteps t = 1..T-1.

    The proposal is p_t ∝ profile_t (the expected size of the KL term at t: any (T,) non-negative array, e.g.
    `schedule_profile`, `pilot_profile`, the mean `terms_bpd` of an earlier exact run, or
    `LossSecondMomentResampler.probabilities()` of a VLB-trained model), mixed with a uniform share of 5% so that
    no timestep has probability 0 (the estimate stays unbiased for any profile). Strata are cut greedily from t = 1: a
    stratum closes once it holds 1/k of the mass still unassigned (k: strata still to cut), so a timestep heavier
    than that is a stratum of its own and the rest is split evenly.
    """
    if num_steps < 2:
        raise ValueError(f"the estimator needs at least 2 timesteps, got T={num_steps}.")
    if num_strata < 1:
        raise ValueError(f"num_strata must be positive, got {num_strata}.")
    probabilities = _proposal(profile, num_steps)
    bounds, mass, unassigned, to_cut = [1], 0.0, 1.0, min(num_strata, num_steps - 1)
    for t, p_t in enumerate(probabilities.tolist()[1:-1], start=1):
        mass += p_t
        if to_cut > 1 and (mass >= unassigned / to_cut or num_steps - 1 - t <= to_cut - 1):
            bounds.append(t + 1)
            unassigned, mass, to_cut = unassigned - mass, 0.0, to_cut - 1
    bounds.append(num_steps)
    return TimestepStrata(probabilities, torch.tensor(bounds))


def _proposal(profile: torch.Tensor | Sequence[float], num_steps: int) -> torch.Tensor:
    """(T,) proposal over 1..T-1: (1 - u) · profile / Σ profile + u / (T - 1); index 0 holds 0."""
    profile = torch.as_tensor(profile, dtype=torch.float64).cpu()
    if profile.shape != (num_steps,):
        raise ValueError(f"profile must have one value per timestep, shape ({num_steps},), got {tuple(profile.shape)}.")
    if not torch.isfinite(profile).all() or (profile < 0).any() or profile[1:].sum() <= 0:
        raise ValueError("profile must be finite and non-negative with a positive sum over t = 1..T-1.")
    weights = (1 - _UNIFORM_SHARE) * profile[1:] / profile[1:].sum() + _UNIFORM_SHARE / (num_steps - 1)
    return torch.cat([torch.zeros(1, dtype=torch.float64), weights])


def pilot_timesteps(num_steps: int, num_timesteps: int) -> torch.Tensor:
    """Up to `num_timesteps` distinct timesteps of 1..T-1, geometrically spaced (dense at small t)."""
    if num_steps < 2:
        raise ValueError(f"the KL terms need at least 2 timesteps, got T={num_steps}.")
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be positive, got {num_timesteps}.")
    return torch.logspace(0, math.log10(num_steps - 1), num_timesteps, dtype=torch.float64).round().long().unique()


def pilot_profile(
    model: Any,
    x0: torch.Tensor,
    scheduler: DDPMPlusScheduler | None = None,
    *,
    num_timesteps: int = 32,
    generator: GeneratorLike = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    clip_denoised: bool = False,
    progress: bool = True,
) -> torch.Tensor:
    """A cheap (T,) profile of the KL terms for `make_strata`: √(mean of KL_t²) over a few pilot images.

    The terms are evaluated at `pilot_timesteps(T, num_timesteps)` (geometrically spaced, dense at small t where
    they change fast) and interpolated linearly in log space; the root mean square makes p_t ∝ √E[KL_t²], the
    proposal of Nichol & Dhariwal 2021 (sec. 3.3). Costs B · num_timesteps network evaluations (fewer when
    timesteps coincide). Arguments as in `evaluate_terms`.
    """
    network, scheduler, generator = _prepare(model, scheduler, x0, generator, max_batch_size)
    _check_images(x0, network, needs_8bit=False)
    num_steps = scheduler.config.num_train_timesteps
    grid = pilot_timesteps(num_steps, num_timesteps)
    plan = grid.expand(x0.shape[0], -1)
    keys = _noise_keys(generator, x0.shape[0])
    terms = _evaluate_plan(network, scheduler, x0, plan, keys, max_batch_size, clip_denoised, progress)
    log_rms = terms.terms_bpd.square().mean(0).sqrt().clamp(min=1e-30).log()
    log_profile = np.interp(np.arange(1, num_steps), grid.numpy(), log_rms.numpy())
    return torch.cat([torch.zeros(1, dtype=torch.float64), torch.from_numpy(log_profile).exp()])


def estimate_bound(
    model: Any,
    x0: torch.Tensor,
    scheduler: DDPMPlusScheduler | None = None,
    *,
    num_strata: int = 49,
    samples_per_stratum: int = 2,
    profile: torch.Tensor | Sequence[float] | None = None,
    generator: GeneratorLike = None,
    timestep_generator: GeneratorLike = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    clip_denoised: bool = False,
    progress: bool = True,
) -> BoundEstimate:
    """Unbiased estimate, with its standard error, of the exact bound (eq. 5) that `variational_bound` computes.

    With the same `generator` (same noise keys, so the same ε for every image and timestep), the estimand is exactly
    `variational_bound(model, x0, scheduler, generator=generator).total_bpd`; its parts are
    * L_T: exact (`prior_bpd`, no network evaluation);
    * L_0: exact (the decoder at t = 0, one network evaluation per image);
    * Σ_{t=1}^{T-1} KL_t = Σ_s Σ_{t∈s} KL_t: in each stratum s of `make_strata(profile, T, num_strata)`, m =
      `samples_per_stratum` timesteps drawn independently from p_t / P_s, averaged as P_s · KL_t / p_t (stratified
      importance sampling, unbiased for any profile since every p_t > 0).
    The variance is Σ_s s_s² / m with the sample variances s_s² of the m draws of each stratum (m ≥ 2, so each is
    estimated without bias); the intervals use Student's t with Welch-Satterthwaite degrees of freedom. Like the
    exact bound, the estimate is also an unbiased draw of the expected bound E_ε[L] (whose noise the standard error
    does not include). Costs 1 + m · S network evaluations per image (S ≤ num_strata strata; default 99 ≈ T/10
    for T = 1000).

    Args:
        model, x0, scheduler, max_batch_size, clip_denoised, progress: as in `variational_bound`.
        num_strata: strata over the KL timesteps (at most T - 1).
        samples_per_stratum: m ≥ 2 timesteps drawn per stratum.
        profile: (T,) expected size of the KL terms for the proposal (see `make_strata`); default
            `schedule_profile(scheduler)`. `pilot_profile` adapts it to the model and usually halves the standard
            error. A uniform profile (`torch.ones(T)`) is unbiased but, with the steep KL profile of a DDPM, has a
            large and skewed error: its intervals cover less often than stated.
        generator: CPU generator(s) as in `variational_bound`: the images' noise keys are drawn first.
        timestep_generator: generator(s) for the timestep draws (the (S, m) uniforms of each image); default: the
            draws continue from `generator`.
    """
    network, scheduler, generator = _prepare(model, scheduler, x0, generator, max_batch_size)
    _check_images(x0, network, needs_8bit=True)
    if samples_per_stratum < 2:
        raise ValueError(f"samples_per_stratum must be at least 2 to estimate the variance, got {samples_per_stratum}.")
    profile = schedule_profile(scheduler) if profile is None else profile
    strata = make_strata(profile, scheduler.config.num_train_timesteps, num_strata)
    batch, draws = x0.shape[0], samples_per_stratum
    keys = _noise_keys(generator, batch)
    timestep_generator = generator if timestep_generator is None else _check_generator(timestep_generator, batch)
    timesteps, weights = strata.sample(_uniforms(timestep_generator, batch, (strata.num_strata, draws)))
    plan = torch.cat([torch.zeros(batch, 1, dtype=torch.long), timesteps.reshape(batch, -1)], dim=1)
    terms = _evaluate_plan(network, scheduler, x0, plan, keys, max_batch_size, clip_denoised, progress).terms_bpd
    weighted_kl = terms[:, 1:].reshape(batch, -1, draws) * weights  # (B, S, m)
    variances = weighted_kl.var(dim=2, correction=1) / draws
    prior, decoder, kl = scheduler.prior_bpd(x0.cpu().double()), terms[:, 0], weighted_kl.mean(2).sum(1)
    return BoundEstimate(
        total_bpd=prior + decoder + kl,
        standard_error=variances.sum(1).sqrt(),
        degrees_of_freedom=welch_satterthwaite_dof(variances, torch.tensor(draws - 1.0), dim=1),
        prior_bpd=prior,
        decoder_bpd=decoder,
        kl_bpd=kl,
        num_evaluations=plan.numel(),
    )
