# Copyright 2026 The ddpm_plus authors. Licensed under the Apache License, Version 2.0.
"""DDPMPlusScheduler: a drop-in for diffusers' `DDPMScheduler` that also carries the DDPM likelihood math.

This file follows diffusers' single-file policy: it imports only torch, numpy and diffusers, so it can travel
inside a Hub repository and be loaded with `trust_remote_code=True`.

Two layers live here:

* Sampling (`step`, `add_noise`, `get_velocity`, `set_timesteps`, ...): bitwise identical to `DDPMScheduler`,
  float32 coefficients, respaced timesteps. Two documented fixes: `fixed_large_log` and `learned` give finite,
  correct samples (diffusers returns NaN), and the extra prediction type `"mean"` is supported.
* The DDPM math (`q_sample`, `q_posterior_mean_variance`, `p_mean_variance`, `prior_bpd`, `vb_terms_bpd`,
  `discretized_gaussian_log_likelihood`, `training_losses`, ...): per-sample timesteps over the full training chain,
  computed from float64 tables built from the same beta schedule. Timesteps are 0-based as in diffusers
  (t = 0 is the paper's t = 1). Equation numbers refer to Ho et al. 2020, "Denoising Diffusion Probabilistic Models".
"""

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from diffusers.configuration_utils import FrozenDict, register_to_config
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler, rescale_zero_terminal_snr

# diffusers' pipeline loader finds a component's load method by looking up its base-class names in the component's
# module, so SchedulerMixin must be a name of this module.
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")
# The schedules whose betas run from beta_start to beta_end (the others ignore both).
INTERPOLATED_BETA_SCHEDULES = ("linear", "scaled_linear", "sigmoid")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "mean")
LOSS_TYPES = ("simple", "vlb", "hybrid", "kl")
LEARNED_VARIANCE_TYPES = ("learned", "learned_range")

# Half the width of one 8-bit bin on [-1, 1] (paper eq. 13: the bin edges are x ± 1/255).
_HALF_BIN = 1.0 / 255.0
# Tolerance (in units of 8-bit levels) for recognising data on the 8-bit grid k / 127.5 - 1.
_GRID_TOLERANCE = 1e-3


@dataclass
class DDPMPlusSchedulerOutput(BaseOutput):
    """Output of `DDPMPlusScheduler.step`, field for field the same as diffusers' `DDPMSchedulerOutput`.

    Args:
        prev_sample: the sample x_{t-1} of the previous timestep, the next model input.
        pred_original_sample: the predicted denoised sample x̂_0 (after clipping or thresholding).
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class PMeanVariance(NamedTuple):
    """Moments of the reverse step p_θ(x_{t-1} | x_t) and the x_0 estimate behind them."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_original_sample: torch.Tensor


class PosteriorCoefficients(NamedTuple):
    """Coefficients of q(x_{t-1} | x_t, x_0) between two points of a (possibly respaced) chain (eq. 6-7)."""

    alpha_prod_t: torch.Tensor
    alpha_prod_t_prev: torch.Tensor
    current_beta_t: torch.Tensor
    pred_original_sample_coeff: torch.Tensor
    current_sample_coeff: torch.Tensor
    variance: torch.Tensor


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise a `ValueError` naming the valid choices when `value` is not one of them."""
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; valid choices are: {', '.join(choices)}.")


def check_generators(
    generator: torch.Generator | Sequence[torch.Generator] | None, batch_size: int
) -> torch.Generator | list[torch.Generator] | None:
    """The generator argument of a batch: one generator (or None) as it is, a sequence of them as a list, which must
    hold one generator per image (else a `ValueError`)."""
    if isinstance(generator, Sequence):
        generator = list(generator)
        if len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for {batch_size} images; pass one per image.")
    return generator


def check_float_tensor(name: str, tensor: torch.Tensor) -> None:
    """Raise a `ValueError` unless `tensor` holds floating-point values (images and noise, never integers)."""
    if not torch.is_floating_point(tensor):
        raise ValueError(f"{name} must be a floating-point tensor, got {tensor.dtype}.")


def check_sample_like(
    name: str, tensor: torch.Tensor, sample: torch.Tensor, sample_name: str = "sample", channels: bool = True
) -> None:
    """Raise a `ValueError` unless `tensor` is a floating-point tensor of `sample`'s shape, channels (dim 1) aside
    when `channels` is False: a tensor that would only broadcast against the sample is refused."""
    check_float_tensor(name, tensor)
    shape, expected = tuple(tensor.shape), tuple(sample.shape)
    if not channels and len(shape) == len(expected) > 1:
        shape, expected = shape[:1] + shape[2:], expected[:1] + expected[2:]
    if shape != expected:
        what = "batch and spatial shape" if not channels else "shape"
        raise ValueError(
            f"{name} of shape {tuple(tensor.shape)} does not match the {what} of {sample_name} "
            f"{tuple(sample.shape)}; pass one of each per image (no broadcasting)."
        )


def check_schedule_settings(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas: np.ndarray | list[float] | None,
) -> None:
    """Raise a `ValueError` naming the settings that cannot give a schedule with 0 < β_t ≤ 1 for every t.

    Checks what can be checked before the schedule is built: a positive integer `num_train_timesteps`; one finite
    trained beta in (0, 1] per timestep; 0 ≤ beta_start ≤ beta_end ≤ 1 for the schedules that interpolate between
    them (`INTERPOLATED_BETA_SCHEDULES`). `check_betas` checks the built schedule.
    """
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, (int, np.integer)):
        raise ValueError(f"num_train_timesteps must be a positive integer, got {num_train_timesteps!r}.")
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be a positive integer, got {num_train_timesteps}.")
    if trained_betas is not None:
        betas = np.asarray(trained_betas, dtype=np.float64)
        if betas.shape != (num_train_timesteps,):
            raise ValueError(
                f"trained_betas must hold one beta per timestep ({num_train_timesteps} for num_train_timesteps="
                f"{num_train_timesteps}), got shape {betas.shape}."
            )
        outside = np.flatnonzero(~((betas > 0) & (betas <= 1)))
        if outside.size:
            raise ValueError(
                f"trained_betas must lie in (0, 1], got trained_betas[{outside[0]}] = {betas[outside[0]]} "
                f"({outside.size} value(s) outside)."
            )
    elif beta_schedule in INTERPOLATED_BETA_SCHEDULES and not 0 <= beta_start <= beta_end <= 1:
        raise ValueError(
            f"beta_schedule={beta_schedule!r} runs from beta_start to beta_end, which need "
            f"0 <= beta_start <= beta_end <= 1; got beta_start={beta_start}, beta_end={beta_end}."
        )


def check_clipping_settings(
    clip_sample_range: float, sample_max_value: float, dynamic_thresholding_ratio: float
) -> None:
    """Raise a `ValueError` for a clipping range or threshold that no x̂_0 can meet: x̂_0 is clipped to
    [-clip_sample_range, clip_sample_range], or thresholded at the `dynamic_thresholding_ratio` quantile of |x̂_0|
    capped at `sample_max_value` (diffusers would collapse every prediction to 0 or NaN)."""
    for name, value in (("clip_sample_range", clip_sample_range), ("sample_max_value", sample_max_value)):
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}.")
    if not 0 < dynamic_thresholding_ratio <= 1:
        raise ValueError(f"dynamic_thresholding_ratio must lie in (0, 1], got {dynamic_thresholding_ratio}.")


def respaced_timesteps(num_train_timesteps: int, section_counts: str) -> list[int]:
    """The timesteps kept by improved-diffusion's `timestep_respacing`, in descending order (for
    `set_timesteps(timesteps=...)`; the reverse chain then steps between consecutive kept timesteps).

    * `"N"` or `"N1,N2,..."`: the chain 0..T-1 is cut into as many equal sections (the first T mod k sections one
      step longer), and section j keeps N_j timesteps: its first, then every (size - 1) / (N_j - 1) steps, each
      position accumulated in floating point and rounded half to even, as upstream does.
    * `"ddimN"`: every s-th timestep from 0, for the smallest stride s that gives exactly N timesteps.
    """
    spacing = section_counts.strip()
    if spacing.startswith("ddim"):
        count = _respacing_count(spacing[len("ddim") :], section_counts)
        for stride in range(1, num_train_timesteps):
            if len(range(0, num_train_timesteps, stride)) == count:
                return list(range(0, num_train_timesteps, stride))[::-1]
        raise ValueError(
            f"timestep_respacing {section_counts!r}: no integer stride gives exactly {count} of "
            f"{num_train_timesteps} timesteps."
        )
    counts = [_respacing_count(part, section_counts) for part in spacing.split(",")]
    size, extra = divmod(num_train_timesteps, len(counts))
    kept, start = [], 0
    for section, count in enumerate(counts):
        section_size = size + (1 if section < extra else 0)
        if count > section_size:
            raise ValueError(
                f"timestep_respacing {section_counts!r}: section {section} has {section_size} timesteps, fewer than "
                f"the {count} asked for."
            )
        stride = 1 if count <= 1 else (section_size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += section_size
    return sorted(set(kept), reverse=True)


def _respacing_count(text: str, spacing: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(
            f"timestep_respacing must be step counts 'N' or 'N1,N2,...' or 'ddimN' with positive integers, got "
            f"{spacing!r}."
        )
    return int(text)


def check_betas(betas: torch.Tensor, config: FrozenDict) -> None:
    """Raise a `ValueError` naming the schedule settings unless every β_t of the built schedule lies in (0, 1]
    (β_t = 0 makes the first posterior degenerate; diffusers' capped schedules stay at or below 0.999, and a zero
    terminal SNR schedule ends at exactly 1)."""
    outside = (~((betas > 0) & (betas <= 1))).nonzero().flatten()
    if outside.numel() == 0:
        return
    t = int(outside[0])
    if config.trained_betas is not None:
        settings = "trained_betas"
    else:
        settings = (
            f"beta_schedule={config.beta_schedule!r}, beta_start={config.beta_start}, beta_end={config.beta_end}, "
            f"num_train_timesteps={config.num_train_timesteps}"
        )
    if config.rescale_betas_zero_snr:
        settings += ", rescale_betas_zero_snr=True"
    raise ValueError(f"The schedule ({settings}) gives β_{t} = {betas[t].item()}; every β_t must lie in (0, 1].")


def posterior_coefficients(alpha_prod_t: torch.Tensor, alpha_prod_t_prev: torch.Tensor) -> PosteriorCoefficients:
    """Posterior coefficients from ᾱ_t and ᾱ_{t-1}, with the exact operation order of diffusers' DDPMScheduler.

    Used with 0-d float32 tensors by `step` (bitwise parity) and with float64 vectors for the likelihood tables.
    """
    beta_prod_t = 1 - alpha_prod_t
    beta_prod_t_prev = 1 - alpha_prod_t_prev
    current_alpha_t = alpha_prod_t / alpha_prod_t_prev
    current_beta_t = 1 - current_alpha_t
    # eq. 7: μ̃_t = √ᾱ_{t-1} β_t / (1-ᾱ_t) · x_0 + √α_t (1-ᾱ_{t-1}) / (1-ᾱ_t) · x_t
    pred_original_sample_coeff = (alpha_prod_t_prev ** (0.5) * current_beta_t) / beta_prod_t
    current_sample_coeff = current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t
    # eq. 7: β̃_t = (1-ᾱ_{t-1}) / (1-ᾱ_t) · β_t
    variance = (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t
    return PosteriorCoefficients(
        alpha_prod_t, alpha_prod_t_prev, current_beta_t, pred_original_sample_coeff, current_sample_coeff, variance
    )


def predict_original_sample(
    model_output: torch.Tensor, sample: torch.Tensor, coeffs: PosteriorCoefficients, prediction_type: str
) -> torch.Tensor:
    """x̂_0 from the network output for every prediction type (same operation order as diffusers)."""
    alpha_prod_t = coeffs.alpha_prod_t
    beta_prod_t = 1 - alpha_prod_t
    if prediction_type == "epsilon":  # x̂_0 = (x_t - √(1-ᾱ_t) ε̂) / √ᾱ_t   (from eq. 4)
        return (sample - beta_prod_t ** (0.5) * model_output) / alpha_prod_t ** (0.5)
    if prediction_type == "sample":
        return model_output
    if prediction_type == "v_prediction":  # x̂_0 = √ᾱ_t x_t - √(1-ᾱ_t) v̂
        return (alpha_prod_t**0.5) * sample - (beta_prod_t**0.5) * model_output
    if prediction_type == "mean":  # invert eq. 7 for x_0 given μ̂
        return (model_output - coeffs.current_sample_coeff * sample) / coeffs.pred_original_sample_coeff
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    raise AssertionError("unreachable")


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """Element-wise KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def check_8bit_data(x: torch.Tensor, name: str = "x0") -> None:
    """Raise a `ValueError` unless `x` holds 8-bit data k/127.5 - 1 (k = 0..255) in float32/float64."""
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"{name} must be float32 or float64 to be recognised as 8-bit data, got {x.dtype}; "
            "the likelihood bound needs full precision."
        )
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    levels = (x.double() + 1) * 127.5
    if levels.min() < -_GRID_TOLERANCE or levels.max() > 255 + _GRID_TOLERANCE:
        raise ValueError(f"{name} must lie in [-1, 1]; got values in [{x.min().item()}, {x.max().item()}].")
    if (levels - levels.round()).abs().max() > _GRID_TOLERANCE:
        raise ValueError(
            f"{name} is not 8-bit data: the discretized likelihood needs values k/127.5 - 1 for integers k in 0..255."
        )


def _log1mexp(d: torch.Tensor) -> torch.Tensor:
    """log(1 - e^d) for d < 0, accurate for d near 0 and for very negative d."""
    return torch.where(d > -math.log(2.0), torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))


def _log_normal_interval_mass(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """log(Φ(upper) - Φ(lower)) for lower < upper, computed on the side of the lighter tail."""
    reflect = (lower + upper) > 0  # Φ(b) - Φ(a) = Φ(-a) - Φ(-b): keep both edges in the lower tail
    a = torch.where(reflect, -upper, lower)
    b = torch.where(reflect, -lower, upper)
    log_cdf_b = torch.special.log_ndtr(b)
    d = torch.special.log_ndtr(a) - log_cdf_b
    return log_cdf_b + _log1mexp(d.clamp(max=-torch.finfo(d.dtype).tiny))


def discretized_gaussian_log_likelihood(x0: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Element-wise log-likelihood (nats) of 8-bit data under a Gaussian discretized to 256 bins (eq. 13).

    Each bin is [x - 1/255, x + 1/255]; the edge bins at -1 and +1 extend to -∞ and +∞. The bin mass is computed
    exactly from log-CDFs (`torch.special.log_ndtr`) on the lighter tail, with no tanh approximation and no floor.

    Args:
        x0: data on the 8-bit grid k/127.5 - 1 in [-1, 1] (float32 or float64), else `ValueError`.
        mean: the Gaussian means, broadcastable to `x0`.
        log_scale: log standard deviations (½ log variance), broadcastable to `x0`.
    """
    check_8bit_data(x0)
    centered = x0 - mean
    inv_scale = torch.exp(-log_scale)
    upper = (centered + _HALF_BIN) * inv_scale
    lower = (centered - _HALF_BIN) * inv_scale
    log_cdf_upper = torch.special.log_ndtr(upper)  # bin (-∞, -1 + 1/255] at x = -1
    log_survival_lower = torch.special.log_ndtr(-lower)  # bin [1 - 1/255, ∞) at x = +1
    interior = _log_normal_interval_mass(lower, upper)
    return torch.where(x0 < -0.999, log_cdf_upper, torch.where(x0 > 0.999, log_survival_lower, interior))


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all but the batch dimension."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64; every other floating dtype is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _float64_betas(config) -> torch.Tensor:
    """The config's beta schedule in float64 (DDPMScheduler builds the same schedule in float32)."""
    num_steps = config.num_train_timesteps
    if config.trained_betas is not None:
        betas = torch.tensor(np.asarray(config.trained_betas), dtype=torch.float64)
    elif config.beta_schedule == "linear":
        betas = torch.linspace(config.beta_start, config.beta_end, num_steps, dtype=torch.float64)
    elif config.beta_schedule == "scaled_linear":
        betas = torch.linspace(config.beta_start**0.5, config.beta_end**0.5, num_steps, dtype=torch.float64) ** 2
    elif config.beta_schedule == "sigmoid":
        ramp = torch.linspace(-6, 6, num_steps, dtype=torch.float64)
        betas = torch.sigmoid(ramp) * (config.beta_end - config.beta_start) + config.beta_start
    else:
        betas = torch.tensor(_alpha_bar_betas(num_steps, config.beta_schedule), dtype=torch.float64)
    if config.rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas


def _alpha_bar_betas(num_steps: int, schedule: str, max_beta: float = 0.999) -> list[float]:
    """β_t = min(1 - ᾱ(t+1)/ᾱ(t), max_beta) for a continuous ᾱ (Nichol & Dhariwal 2021 cosine, or laplace)."""

    def cosine(s: float) -> float:  # ᾱ(s) = cos²(((s + 0.008) / 1.008) · π/2)
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    def laplace(s: float) -> float:
        lmb = -0.5 * math.copysign(1, 0.5 - s) * math.log(1 - 2 * math.fabs(0.5 - s) + 1e-6)
        snr = math.exp(lmb)
        return math.sqrt(snr / (1 + snr))

    alpha_bar = cosine if schedule == "squaredcos_cap_v2" else laplace
    return [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)]


class DDPMPlusScheduler(DDPMScheduler):
    """A drop-in `DDPMScheduler` with the complete DDPM math: posterior, reverse moments, the variational bound.

    Same 15 config keys, defaults and order as `DDPMScheduler`, no extra keys (DDPM+ features are method arguments),
    so configs move freely between this class and diffusers' schedulers. `step`, `add_noise`, `get_velocity` and
    `set_timesteps` give bitwise-identical results to `DDPMScheduler` for every supported setting, with these
    documented differences:

    * `variance_type="fixed_large_log"`: diffusers treats log β_t as a variance and returns NaN; here the noise
      scale is exp(½ log β_t) = √β_t, i.e. the same samples as `fixed_large`.
    * `variance_type="learned"`: diffusers takes the square root of the raw extra channels (NaN when negative);
      here the extra channels are the log-variance, as in improved DDPM (Nichol & Dhariwal 2021).
    * `prediction_type="mean"`: the network predicts the posterior mean μ_θ(x_t, t) directly.
    * Unknown `beta_schedule`, `variance_type` or `prediction_type` raise `ValueError` naming the valid choices,
      and a model output whose channel count does not fit the variance type raises `ValueError`.
    * A schedule with some β_t outside (0, 1] raises `ValueError` naming the settings (`check_schedule_settings`,
      `check_betas`): beta_start > beta_end, a beta_end above 1 or a negative beta_start for the interpolated
      schedules, trained betas outside (0, 1] or not one per timestep. diffusers builds such schedules silently.
    * A `clip_sample_range` or `sample_max_value` that is not positive, or a `dynamic_thresholding_ratio` outside
      (0, 1], raises `ValueError` (`check_clipping_settings`); diffusers clips every x̂_0 to 0 with them.
    * `set_timesteps` with fewer than 1 step, with neither a step count nor timesteps, or with an empty or negative
      custom schedule, and `step` at a timestep outside the schedule raise `ValueError` naming the valid range
      (diffusers raises ZeroDivisionError, TypeError or IndexError, returns an empty schedule, or wraps a negative
      timestep around). Errors that diffusers already raises as `ValueError` are unchanged.
    * `step`, `add_noise` and `get_velocity` refuse with `ValueError`, as `q_sample` does, timesteps outside 0..T-1,
      a model output or noise whose batch or spatial shape differs from the sample's (diffusers broadcasts), a
      generator list that is not one per image, and integer samples, model outputs or noise.

    Config values are read at call time, so pipelines that rewrite `steps_offset` or `clip_sample` after
    construction behave as with `DDPMScheduler`.

    Args: as `DDPMScheduler` (num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
        variance_type, clip_sample, prediction_type, thresholding, dynamic_thresholding_ratio, clip_sample_range,
        sample_max_value, timestep_spacing, steps_offset, rescale_betas_zero_snr).
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        if trained_betas is None:
            check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
        check_schedule_settings(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        check_choice("variance_type", variance_type, VARIANCE_TYPES)
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_clipping_settings(clip_sample_range, sample_max_value, dynamic_thresholding_ratio)
        # The float32 sampling tables are built by DDPMScheduler itself, so they are identical to diffusers' by
        # construction (it registers the same configuration again).
        super().__init__(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
            trained_betas=trained_betas,
            variance_type=variance_type,
            clip_sample=clip_sample,
            prediction_type=prediction_type,
            thresholding=thresholding,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            clip_sample_range=clip_sample_range,
            sample_max_value=sample_max_value,
            timestep_spacing=timestep_spacing,
            steps_offset=steps_offset,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
        )
        self._build_float64_tables()

    def _build_float64_tables(self) -> None:
        """Float64 tables of the training chain for the likelihood math (index t = 0..T-1)."""
        betas = _float64_betas(self.config)
        for table in (self.betas, betas):  # the float32 sampling schedule and its float64 twin
            check_betas(table, self.config)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        posterior = posterior_coefficients(alphas_cumprod, alphas_cumprod_prev)
        # β̃_0 = 0: its log is replaced by log β̃_1, as in the reference implementations.
        self.betas_f64 = betas
        self.alphas_cumprod_f64 = alphas_cumprod
        self.alphas_cumprod_prev_f64 = alphas_cumprod_prev
        self.posterior_variance_f64 = posterior.variance
        self.posterior_log_variance_clipped_f64 = torch.log(
            torch.cat([posterior.variance[1:2], posterior.variance[1:]])
        )
        # fixed_large: σ_t² = β_t, with β̃_1 at t = 0 for a sharper decoder (as in the reference implementations).
        self.fixed_large_log_variance_f64 = torch.log(torch.cat([posterior.variance[1:2], betas[1:]]))

    # ------------------------------------------------------------------------------------------------------------
    # Sampling: diffusers-compatible
    # ------------------------------------------------------------------------------------------------------------

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """`DDPMScheduler.set_timesteps`, with a `ValueError` naming the valid range where diffusers would fail
        with ZeroDivisionError, TypeError or IndexError, or silently keep an empty or negative schedule.

        Args:
            num_inference_steps: number of steps, 1..num_train_timesteps, spaced by `timestep_spacing`.
            device: where the timesteps go.
            timesteps: custom timesteps in descending order in 0..num_train_timesteps-1 (instead of
                `num_inference_steps`).
        """
        self._check_inference_schedule(num_inference_steps, timesteps)
        super().set_timesteps(num_inference_steps=num_inference_steps, device=device, timesteps=timesteps)

    def _check_inference_schedule(self, num_inference_steps: int | None, timesteps: list[int] | None) -> None:
        """The checks diffusers lacks; the cases it already refuses with a `ValueError` are left to it."""
        num_train_timesteps = self.config.num_train_timesteps
        if num_inference_steps is None and timesteps is None:
            raise ValueError(f"Pass num_inference_steps (1..{num_train_timesteps}) or custom timesteps.")
        if timesteps is None and num_inference_steps < 1:
            raise ValueError(
                f"num_inference_steps must lie in 1..{num_train_timesteps} (num_train_timesteps), "
                f"got {num_inference_steps}."
            )
        if num_inference_steps is None and (len(timesteps) == 0 or min(timesteps) < 0):
            got = f"a timestep {min(timesteps)}" if len(timesteps) else "an empty list"
            raise ValueError(
                f"Custom timesteps must be a non-empty descending list in 0..{num_train_timesteps - 1}, got {got}."
            )

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        stochasticity: float | None = None,
    ) -> DDPMPlusSchedulerOutput | tuple:
        """One reverse step x_t → x_{t-1}; by default the ancestral step of Algorithm 2, bitwise identical to
        `DDPMScheduler.step`.

        Args:
            model_output: the network output; with `learned`/`learned_range` variances it has twice the channels
                of `sample` (the second half is the variance output).
            timestep: the current timestep t: one of `self.timesteps` after `set_timesteps`, else 0..T-1
                (`ValueError` otherwise).
            sample: the current sample x_t.
            generator: a generator or a list of generators (one per batch element) for the noise.
            return_dict: return a `DDPMPlusSchedulerOutput` instead of a tuple.
            stochasticity: the free noise level η ∈ [0, 1] of the reverse SDE
                dx = [a x + ((b² + c²)/2) ∇log p_t] dt + c dW with c = η b (docs/math.md, "The SDE view"), discretized
                as x_{t-1} = √ᾱ_{t-1} x̂_0 + √(1 - ᾱ_{t-1} - η²σ_t²) ε̂ + η σ_t z (Song et al. 2021, eq. 12), where
                σ_t is the configured step noise. η = 1 with `fixed_small` is ancestral DDPM sampling, η = 0 the
                deterministic probability-flow / DDIM limit (no noise is drawn). `None` (default) keeps diffusers'
                exact DDPM step. Deliberately not named `eta`: Stable Diffusion pipelines pass `eta=0.0` to every
                `step` that accepts it.
        """
        self._check_step_timestep(timestep)
        self._check_step_inputs(model_output, sample, generator)
        t = timestep
        prev_t = self.previous_timestep(t)
        model_output, predicted_variance = self._split_variance_channels(model_output, sample)

        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        coeffs = posterior_coefficients(alpha_prod_t, alpha_prod_t_prev)

        prediction_type = self.config.prediction_type
        pred_original_sample = predict_original_sample(
            model_output, sample, self._output_coefficients(t, coeffs), prediction_type
        )
        pred_original_sample = self._clip_or_threshold(pred_original_sample)

        if stochasticity is not None:
            pred_prev_sample = self._generalized_step(
                pred_original_sample, sample, coeffs, predicted_variance, t, stochasticity, generator
            )
        else:
            pred_prev_sample = self._ancestral_step(
                model_output, pred_original_sample, sample, coeffs, predicted_variance, t, prev_t, generator
            )

        if not return_dict:
            return (pred_prev_sample, pred_original_sample)
        return DDPMPlusSchedulerOutput(prev_sample=pred_prev_sample, pred_original_sample=pred_original_sample)

    def _check_step_timestep(self, timestep: int | torch.Tensor) -> None:
        """Raise a `ValueError` unless `step` can take `timestep`: one of `self.timesteps` once `set_timesteps` has
        set a schedule, else a training timestep 0..T-1 (diffusers raises IndexError, or wraps a negative one)."""
        value = timestep.item() if isinstance(timestep, torch.Tensor) else timestep
        if self.custom_timesteps or self.num_inference_steps:
            if not bool((self.timesteps == timestep).any()):
                raise ValueError(
                    f"step got timestep {value}, which is not in the schedule set by set_timesteps "
                    f"({len(self.timesteps)} timesteps from {self.timesteps[0].item()} down to "
                    f"{self.timesteps[-1].item()}); pass one of `scheduler.timesteps`."
                )
        elif not 0 <= value < self.config.num_train_timesteps:
            raise ValueError(
                f"step got timestep {value}; timesteps must lie in 0..{self.config.num_train_timesteps - 1}."
            )

    @staticmethod
    def _check_step_inputs(
        model_output: torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> None:
        """Raise a `ValueError` for an integer sample or model output, a model output whose batch or spatial shape
        differs from the sample's (channels are checked against the variance type), or a generator list that is not
        one per image; a one-generator list is one generator, as in diffusers' `randn_tensor`."""
        check_float_tensor("sample", sample)
        check_sample_like("model_output", model_output, sample, channels=False)
        if not (isinstance(generator, Sequence) and len(generator) == 1):
            check_generators(generator, sample.shape[0])

    def _output_coefficients(self, t: int | torch.Tensor, coeffs: PosteriorCoefficients) -> PosteriorCoefficients:
        """Coefficients that define the network output: a "mean" output is μ_θ of the training chain's step
        t → t-1, whatever the (respaced) step being taken; the other parameterizations depend on ᾱ_t only."""
        if self.config.prediction_type != "mean":
            return coeffs
        alpha_prod_t_minus_1 = self.alphas_cumprod[t - 1] if t > 0 else self.one
        return posterior_coefficients(coeffs.alpha_prod_t, alpha_prod_t_minus_1)

    def _ancestral_step(
        self,
        model_output: torch.Tensor,
        pred_original_sample: torch.Tensor,
        sample: torch.Tensor,
        coeffs: PosteriorCoefficients,
        predicted_variance: torch.Tensor | None,
        t: int | torch.Tensor,
        prev_t: int | torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> torch.Tensor:
        """x_{t-1} = μ + σ_t z (Algorithm 2) with diffusers' operation order; noise is drawn when the current t > 0."""
        unchanged_mean = not (self.config.thresholding or self.config.clip_sample) and prev_t == t - 1
        if self.config.prediction_type == "mean" and unchanged_mean:
            pred_prev_sample = model_output  # the network's μ_θ is used as is
        else:
            pred_prev_sample = (
                coeffs.pred_original_sample_coeff * pred_original_sample + coeffs.current_sample_coeff * sample
            )
        variance = 0
        if t > 0:
            variance_noise = randn_tensor(
                sample.shape, generator=generator, device=sample.device, dtype=model_output.dtype
            )
            variance = self._noise_scale(coeffs, predicted_variance) * variance_noise
        return pred_prev_sample + variance

    def _generalized_step(
        self,
        pred_original_sample: torch.Tensor,
        sample: torch.Tensor,
        coeffs: PosteriorCoefficients,
        predicted_variance: torch.Tensor | None,
        t: int | torch.Tensor,
        stochasticity: float,
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> torch.Tensor:
        """x_{t-1} = √ᾱ_{t-1} x̂_0 + √(1 - ᾱ_{t-1} - η²σ_t²) ε̂ + η σ_t z, ε̂ consistent with x̂_0 (eq. 4)."""
        if not 0.0 <= stochasticity <= 1.0:
            raise ValueError(f"stochasticity must lie in [0, 1], got {stochasticity}.")
        alpha_prod_t, alpha_prod_t_prev = coeffs.alpha_prod_t, coeffs.alpha_prod_t_prev
        pred_epsilon = (sample - alpha_prod_t ** (0.5) * pred_original_sample) / (1 - alpha_prod_t) ** (0.5)
        std = stochasticity * self._noise_scale(coeffs, predicted_variance)
        direction = torch.clamp(1 - alpha_prod_t_prev - std**2, min=0) ** (0.5)
        pred_prev_sample = alpha_prod_t_prev ** (0.5) * pred_original_sample + direction * pred_epsilon
        if t > 0 and stochasticity > 0:
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
            pred_prev_sample = pred_prev_sample + std * noise
        return pred_prev_sample

    def _clip_or_threshold(self, pred_original_sample: torch.Tensor) -> torch.Tensor:
        if self.config.thresholding:
            return self._threshold_sample(pred_original_sample)
        if self.config.clip_sample:
            return pred_original_sample.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        return pred_original_sample

    def _noise_scale(self, coeffs: PosteriorCoefficients, predicted_variance: torch.Tensor | None) -> torch.Tensor:
        """Standard deviation σ_t of the step noise for the configured variance type."""
        variance_type = self.config.variance_type
        posterior_variance = torch.clamp(coeffs.variance, min=1e-20)
        if variance_type == "fixed_small":
            return posterior_variance ** (0.5)
        if variance_type == "fixed_small_log":
            return torch.exp(0.5 * torch.log(posterior_variance))
        if variance_type == "fixed_large":
            return coeffs.current_beta_t ** (0.5)
        if variance_type == "fixed_large_log":
            return torch.exp(0.5 * torch.log(coeffs.current_beta_t))
        if variance_type == "learned":  # the extra channels are log σ_t²
            return torch.exp(0.5 * predicted_variance)
        if variance_type == "learned_range":  # log σ_t² = f log β_t + (1 - f) log β̃_t, f = (v + 1) / 2
            min_log = torch.log(posterior_variance)
            max_log = torch.log(coeffs.current_beta_t)
            frac = (predicted_variance + 1) / 2
            return torch.exp(0.5 * (frac * max_log + (1 - frac) * min_log))
        check_choice("variance_type", variance_type, VARIANCE_TYPES)
        raise AssertionError("unreachable")

    def _split_variance_channels(
        self, model_output: torch.Tensor, sample: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Split a learned-variance output into (mean part, variance part); check the channel count."""
        channels = sample.shape[1]
        if self.config.variance_type in LEARNED_VARIANCE_TYPES:
            if model_output.shape[1] != 2 * channels:
                raise ValueError(
                    f"variance_type={self.config.variance_type!r} needs a model output with twice the sample's "
                    f"channels ({2 * channels}), got {model_output.shape[1]}."
                )
            model_output, predicted_variance = torch.split(model_output, channels, dim=1)
            return model_output, predicted_variance
        if model_output.shape[1] != channels:
            raise ValueError(
                f"variance_type={self.config.variance_type!r} needs a model output with the sample's {channels} "
                f"channels, got {model_output.shape[1]} (a learned-variance model needs 'learned_range')."
            )
        return model_output, None

    # ------------------------------------------------------------------------------------------------------------
    # The DDPM math over the training chain (float64 tables, per-sample timesteps)
    # ------------------------------------------------------------------------------------------------------------

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor
    ) -> torch.Tensor:
        """`DDPMScheduler.add_noise` (x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε, float32 coefficients, bitwise diffusers'), with a
        `ValueError` for timesteps outside 0..T-1 or not one per sample (or one for all), noise of another shape
        than the samples, and integer samples or noise (diffusers wraps negative timesteps around and broadcasts)."""
        self._check_noising_inputs(original_samples, noise, timesteps, "original_samples")
        return super().add_noise(original_samples, noise, timesteps)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor) -> torch.Tensor:
        """`DDPMScheduler.get_velocity` (v = √ᾱ_t ε - √(1-ᾱ_t) x_0), with the checks of `add_noise`."""
        self._check_noising_inputs(sample, noise, timesteps, "sample")
        return super().get_velocity(sample, noise, timesteps)

    def _check_noising_inputs(
        self, samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, samples_name: str
    ) -> None:
        """The checks of `q_sample`, for diffusers' `add_noise` arguments: timesteps of any shape with one value, or
        one per sample (diffusers flattens them)."""
        check_float_tensor(samples_name, samples)
        check_sample_like("noise", noise, samples, samples_name)
        timesteps = torch.as_tensor(timesteps)
        self._timestep_batch(timesteps.reshape(()) if timesteps.numel() == 1 else timesteps.flatten(), len(samples))

    def _timestep_batch(self, t: int | torch.Tensor, batch_size: int) -> torch.Tensor:
        """Timesteps as a CPU long tensor of shape (batch_size,), checked to lie in 0..T-1."""
        t = torch.as_tensor(t).detach().to("cpu", torch.long)
        if t.ndim == 0:
            t = t.expand(batch_size)
        if t.shape != (batch_size,):
            raise ValueError(f"timesteps must be a scalar or have shape ({batch_size},), got {tuple(t.shape)}.")
        num_steps = self.config.num_train_timesteps
        if t.numel():
            low, high = (int(value) for value in torch.aminmax(t))  # one pass: add_noise runs every training step
            if low < 0 or high >= num_steps:
                raise ValueError(f"timesteps must lie in 0..{num_steps - 1}, got values in [{low}, {high}].")
        return t

    def _per_sample(self, table: torch.Tensor, t: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """table[t] shaped (B, 1, ..., 1) in `like`'s compute dtype and device."""
        values = table[self._timestep_batch(t, like.shape[0])]
        values = values.to(device=like.device, dtype=_compute_dtype(like))
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    def _chain_coefficients(self, t: int | torch.Tensor, like: torch.Tensor) -> PosteriorCoefficients:
        """Posterior coefficients between t and t-1 of the training chain, per sample."""
        alpha_prod_t = self._per_sample(self.alphas_cumprod_f64, t, like)
        alpha_prod_t_prev = self._per_sample(self.alphas_cumprod_prev_f64, t, like)
        return posterior_coefficients(alpha_prod_t, alpha_prod_t_prev)

    def snr(self, t: int | torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio ᾱ_t / (1 - ᾱ_t) (float64, shape of `t`)."""
        alpha_prod_t = self.alphas_cumprod_f64[torch.as_tensor(t).to("cpu", torch.long)]
        return alpha_prod_t / (1 - alpha_prod_t)

    def q_sample(self, x0: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Sample q(x_t | x_0): x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε (eq. 4), float64 coefficients; a `ValueError` for
        timesteps outside 0..T-1 or not one per sample, noise of another shape, or integer tensors."""
        check_float_tensor("x0", x0)
        check_sample_like("noise", noise, x0, "x0")
        alpha_prod_t = self._per_sample(self.alphas_cumprod_f64, t, x0)
        return (alpha_prod_t.sqrt() * x0 + (1 - alpha_prod_t).sqrt() * noise).to(x0.dtype)

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and log-variance of q(x_{t-1} | x_t, x_0) (eq. 6-7).

        At t = 0 the variance β̃ is 0; its log is the clipped value log β̃_1, as in the reference codebases.
        """
        coeffs = self._chain_coefficients(t, x_t)
        mean = coeffs.pred_original_sample_coeff * x0 + coeffs.current_sample_coeff * x_t
        variance = self._per_sample(self.posterior_variance_f64, t, x_t)
        log_variance = self._per_sample(self.posterior_log_variance_clipped_f64, t, x_t)
        return mean.to(x_t.dtype), variance.expand_as(x_t).to(x_t.dtype), log_variance.expand_as(x_t).to(x_t.dtype)

    def convert_prediction(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: int | torch.Tensor,
        to: str,
        prediction_type: str | None = None,
    ) -> torch.Tensor:
        """Re-express a network output as another parameterization of the same mean μ_θ.

        Args:
            model_output: the output (mean part only, same channels as `x_t`).
            x_t: the noisy input.
            t: training timesteps (scalar or per sample).
            to: "epsilon", "sample", "v_prediction" or "mean".
            prediction_type: what `model_output` is; defaults to the config's prediction type.
        """
        source = prediction_type or self.config.prediction_type
        check_choice("prediction_type", source, PREDICTION_TYPES)
        check_choice("target prediction type", to, PREDICTION_TYPES)
        if source == to:
            return model_output
        coeffs = self._chain_coefficients(t, x_t)
        x0 = predict_original_sample(model_output, x_t, coeffs, source)
        if to == "sample":
            return x0.to(x_t.dtype)
        if to == "mean":  # eq. 7 with x̂_0
            return (coeffs.pred_original_sample_coeff * x0 + coeffs.current_sample_coeff * x_t).to(x_t.dtype)
        alpha_prod_t = coeffs.alpha_prod_t
        # ε̂ = (x_t - √ᾱ_t x̂_0) / √(1-ᾱ_t)   (eq. 4 solved for ε)
        eps = model_output if source == "epsilon" else (x_t - alpha_prod_t.sqrt() * x0) / (1 - alpha_prod_t).sqrt()
        if to == "epsilon":
            return eps.to(x_t.dtype)
        return (alpha_prod_t.sqrt() * eps - (1 - alpha_prod_t).sqrt() * x0).to(x_t.dtype)  # v = √ᾱ ε - √(1-ᾱ) x_0

    def convert_model_output(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: int | torch.Tensor,
        to: str,
        prediction_type: str | None = None,
    ) -> torch.Tensor:
        """Deprecated alias of `convert_prediction`, removed in ddpm_plus 0.2.0 (diffusers' multistep schedulers have
        a `convert_model_output` of another meaning)."""
        warnings.warn(
            "`DDPMPlusScheduler.convert_model_output` is deprecated and will be removed in ddpm_plus 0.2.0; use "
            "`convert_prediction` (same arguments).",
            FutureWarning,
            stacklevel=2,
        )
        return self.convert_prediction(model_output, x_t, t, to, prediction_type)

    def p_mean_variance(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor, clip_denoised: bool = False
    ) -> PMeanVariance:
        """Moments of p_θ(x_{t-1} | x_t) (eq. 1, 11) for the configured prediction and variance types.

        `learned`/`learned_range` take the doubled-channel output. Fixed variances: σ_t² = β̃_t ("fixed_small",
        with log β̃_1 at t = 0) or β_t ("fixed_large", with β̃_1 at t = 0); "learned": the extra channels are
        log σ_t²; "learned_range": log σ_t² = f log β_t + (1-f) log β̃_t, f = (v+1)/2. With `clip_denoised`,
        x̂_0 is clipped to [-1, 1] before the posterior mean is formed.
        """
        mean_output, variance_output = self._split_variance_channels(model_output, x_t)
        coeffs = self._chain_coefficients(t, x_t)
        prediction_type = self.config.prediction_type
        pred_original_sample = predict_original_sample(mean_output, x_t, coeffs, prediction_type)
        if clip_denoised:
            pred_original_sample = pred_original_sample.clamp(-1, 1)
        if prediction_type == "mean" and not clip_denoised:
            mean = mean_output
        else:
            mean = coeffs.pred_original_sample_coeff * pred_original_sample + coeffs.current_sample_coeff * x_t
        log_variance = self._model_log_variance(variance_output, t, x_t).expand_as(x_t)
        dtype = x_t.dtype
        return PMeanVariance(
            mean.to(dtype), torch.exp(log_variance).to(dtype), log_variance.to(dtype), pred_original_sample.to(dtype)
        )

    def _model_log_variance(
        self, variance_output: torch.Tensor | None, t: int | torch.Tensor, x_t: torch.Tensor
    ) -> torch.Tensor:
        variance_type = self.config.variance_type
        if variance_type in ("fixed_small", "fixed_small_log"):
            return self._per_sample(self.posterior_log_variance_clipped_f64, t, x_t)
        if variance_type in ("fixed_large", "fixed_large_log"):
            return self._per_sample(self.fixed_large_log_variance_f64, t, x_t)
        if variance_type == "learned":
            return variance_output.to(_compute_dtype(x_t))
        min_log = self._per_sample(self.posterior_log_variance_clipped_f64, t, x_t)
        max_log = self._per_sample(self.betas_f64, t, x_t).log()
        frac = (variance_output.to(min_log.dtype) + 1) / 2
        return frac * max_log + (1 - frac) * min_log

    def prior_bpd(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) ‖ N(0, I)) in bits/dim, per sample (constant in θ)."""
        last = self.config.num_train_timesteps - 1
        alpha_prod_T = self._per_sample(self.alphas_cumprod_f64, last, x0)
        mean = alpha_prod_T.sqrt() * x0
        log_variance = torch.log1p(-alpha_prod_T).expand_as(mean)
        kl = normal_kl(mean, log_variance, torch.zeros_like(mean), torch.zeros_like(mean))
        return (_mean_flat(kl) / math.log(2.0)).to(x0.dtype)

    def vb_terms_bpd(
        self,
        model_output: torch.Tensor,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: int | torch.Tensor,
        clip_denoised: bool = False,
    ) -> torch.Tensor:
        """Per-sample bits/dim of one term of the bound (eq. 5).

        For t > 0: KL(q(x_{t-1} | x_t, x_0) ‖ p_θ(x_{t-1} | x_t)) (the paper's L_{t}); for t = 0: the discretized
        decoder NLL -log p_θ(x_0 | x_1) (L_0, eq. 13). `x0` must be 8-bit data in [-1, 1].
        """
        moments = self.p_mean_variance(model_output, x_t, t, clip_denoised=clip_denoised)
        return self.vb_terms_from_moments(x0, x_t, t, moments.mean, moments.log_variance)

    def vb_terms_from_moments(
        self,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: int | torch.Tensor,
        mean: torch.Tensor,
        log_variance: torch.Tensor,
    ) -> torch.Tensor:
        """`vb_terms_bpd` given the moments of p_θ(x_{t-1} | x_t) (e.g. from `p_mean_variance`)."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x0, x_t, t)
        nats = _mean_flat(normal_kl(true_mean, true_log_variance, mean, log_variance))
        decoder_rows = (self._timestep_batch(t, x0.shape[0]) == 0).nonzero().squeeze(1).to(x0.device)
        if decoder_rows.numel():  # only the t = 0 rows need (and are checked for) 8-bit data
            log_likelihood = discretized_gaussian_log_likelihood(
                x0[decoder_rows], mean[decoder_rows], 0.5 * log_variance[decoder_rows]
            )
            nats = nats.index_copy(0, decoder_rows, -_mean_flat(log_likelihood))
        return nats / math.log(2.0)

    def training_losses(
        self,
        model_output: torch.Tensor,
        x0: torch.Tensor,
        noise: torch.Tensor,
        t: int | torch.Tensor,
        loss_type: str = "simple",
        x_t: torch.Tensor | None = None,
        snr_gamma: float | None = None,
        vlb_weight: float = 0.001,
    ) -> dict[str, torch.Tensor]:
        """Per-sample training losses.

        Returns a dict with `loss` and `mse` (and `vb` for the losses that use the bound), each of shape (B,):

        * `mse`: mean over dimensions of (target - output)², the target being ε, x_0, v or μ̃ for the prediction
          type (eq. 14 for ε); with `snr_gamma` weighted by min-SNR-γ (Hang et al. 2023), i.e. an x_0-MSE weight of
          min(SNR_t, γ).
        * `vb`: the bound term of `vb_terms_bpd` at t in bits/dim (L_{t} for t > 0, L_0 at t = 0).
        * `loss`: "simple" → mse; "hybrid" → mse + λ·T·vb with λ = `vlb_weight` (0.001) and the gradient of vb
          stopped through the mean, so it trains only the learned variance (Nichol & Dhariwal 2021);
          "vlb" → T·vb, an unbiased estimate (t ~ U{0..T-1}) of the bound minus L_T in bits/dim, training mean and
          variance; "kl" → vb, the raw per-timestep term.

        `x_t` defaults to `q_sample(x0, noise, t)`; pass the network's input if it was built differently.
        The bound terms need 8-bit `x0` data in [-1, 1].
        """
        check_choice("loss_type", loss_type, LOSS_TYPES)
        learned = self.config.variance_type in LEARNED_VARIANCE_TYPES
        if loss_type == "hybrid" and not learned:
            raise ValueError(
                "loss_type='hybrid' trains the variance only; it needs variance_type 'learned' or 'learned_range'."
            )
        if x_t is None:
            x_t = self.q_sample(x0, noise, t)
        mean_output, variance_output = self._split_variance_channels(model_output, x_t)
        target = self._training_target(x0, noise, x_t, t)
        squared_error = (target.to(mean_output.dtype) - mean_output) ** 2
        if snr_gamma is not None:
            squared_error = squared_error * self._min_snr_weight(t, x_t, snr_gamma).to(squared_error.dtype)
        losses = {"mse": _mean_flat(squared_error)}
        if loss_type == "simple":
            losses["loss"] = losses["mse"]
            return losses
        if loss_type == "hybrid":
            model_output = torch.cat([mean_output.detach(), variance_output], dim=1)
        vb = self.vb_terms_bpd(model_output, x0, x_t, t)
        losses["vb"] = vb
        num_steps = self.config.num_train_timesteps
        if loss_type == "hybrid":
            losses["loss"] = losses["mse"] + vlb_weight * num_steps * vb
        elif loss_type == "vlb":
            losses["loss"] = num_steps * vb
        else:
            losses["loss"] = vb
        return losses

    def _training_target(
        self, x0: torch.Tensor, noise: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor
    ) -> torch.Tensor:
        prediction_type = self.config.prediction_type
        if prediction_type == "epsilon":
            return noise
        if prediction_type == "sample":
            return x0
        if prediction_type == "mean":
            return self.q_posterior_mean_variance(x0, x_t, t)[0]
        return self.convert_prediction(noise, x_t, t, to="v_prediction", prediction_type="epsilon")

    def _min_snr_weight(self, t: int | torch.Tensor, like: torch.Tensor, gamma: float) -> torch.Tensor:
        """Weight turning the prediction-space MSE into min(SNR, γ) · ‖x_0 - x̂_0‖² (min-SNR-γ)."""
        alpha_prod_t = self._per_sample(self.alphas_cumprod_f64, t, like)
        snr = alpha_prod_t / (1 - alpha_prod_t)
        # ‖target - output‖² = scale² · ‖x_0 - x̂_0‖² for each parameterization; the weight is min(SNR, γ) / scale²
        prediction_type = self.config.prediction_type
        if prediction_type == "epsilon":  # scale² = SNR; written so that SNR = 0 (zero terminal SNR) gives 1
            return torch.clamp(gamma / snr, max=1.0)
        if prediction_type == "v_prediction":  # scale² = SNR + 1
            return torch.clamp(snr, max=gamma) / (snr + 1)
        if prediction_type == "mean":  # scale = √ᾱ_{t-1} β_t / (1-ᾱ_t)
            return torch.clamp(snr, max=gamma) / self._chain_coefficients(t, like).pred_original_sample_coeff ** 2
        return torch.clamp(snr, max=gamma)
