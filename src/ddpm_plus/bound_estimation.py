"""A fast, unbiased estimate of the exact variational bound, with an honest standard error and confidence interval.

`estimate_bound` computes the prior and the decoder term exactly, and the sum of the T-1 KL terms by stratified
importance sampling of timesteps, per image and for the data-set mean, at a small fraction of the network
evaluations of `ddpm_plus.likelihood.variational_bound` (`schedule_profile` and `pilot_profile` shape the timestep
proposal; `pilot_terms` is the measurement behind a pilot profile). With the same generator(s) it draws the same
noise as the exact bound (see `ddpm_plus.likelihood`), so it estimates exactly the value that `variational_bound`
computes. `evaluate_terms` gives the bound terms at any plan of (image, timestep) pairs.

This module belongs to the ddpm_plus package only: saved pipeline directories and community folders carry the exact
bound (`ddpm_plus.likelihood`), on which it builds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .likelihood import (
    DEFAULT_MAX_BATCH_SIZE,
    BoundTerms,
    GeneratorLike,
    PerImageResults,
    check_images,
    draw_noise_keys,
    evaluate_plan,
    prepare_evaluation,
    tail_sums,
)
from .scheduling_ddpm_plus import DDPMPlusScheduler, check_generators

# ---------------------------------------------------------------------------------------------------------------
# Estimates and their intervals
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class BoundEstimate(PerImageResults):
    """A Monte-Carlo estimate of the variational bound per image (bits/dim; float64 tensors on the CPU).

    The estimand is the exact bound of each image for the same noise (see `estimate_bound`). Variances come from
    stratified sampling with ≥ 2 draws per stratum; intervals use Student's t with Welch-Satterthwaite degrees of
    freedom. The draws themselves (S strata of m draws each) are kept for figures (`ddpm_plus.plots`); they are None
    in an estimate built without them.

    Attributes:
        total_bpd: (B,) estimate of the total bound: prior (exact) + decoder (exact) + Σ KL (estimated).
        standard_error: (B,) standard error of `total_bpd`.
        degrees_of_freedom: (B,) effective degrees of freedom of the variance estimate (inf when it is exactly 0).
        prior_bpd: (B,) the prior term L_T.
        decoder_bpd: (B,) the decoder term L_0.
        kl_bpd: (B,) the estimate of Σ_{t≥1} KL terms.
        num_evaluations: network evaluations spent on these images.
        sampled_timesteps: (B, S·m) long, the timesteps drawn, stratum by stratum (columns s·m to s·m + m - 1
            belong to stratum s).
        sampled_terms_bpd: (B, S·m) the KL term at each drawn timestep (not weighted).
        sampled_x0_mse: (B, S·m) the x̂_0 MSE at each drawn timestep (mean over dimensions, [-1, 1] scale).
        stratum_bounds: (B, S + 1) long, the strata's timestep boundaries (`TimestepStrata.bounds`): stratum s holds
            bounds[s] ≤ t < bounds[s+1]. The same for every image of one `estimate_bound` call.
        stratum_kl_bpd: (B, S) the estimate of Σ_{t∈s} KL_t in each stratum s; their sum is `kl_bpd`.
    """

    total_bpd: torch.Tensor
    standard_error: torch.Tensor
    degrees_of_freedom: torch.Tensor
    prior_bpd: torch.Tensor
    decoder_bpd: torch.Tensor
    kl_bpd: torch.Tensor
    num_evaluations: int
    sampled_timesteps: torch.Tensor | None = None
    sampled_terms_bpd: torch.Tensor | None = None
    sampled_x0_mse: torch.Tensor | None = None
    stratum_bounds: torch.Tensor | None = None
    stratum_kl_bpd: torch.Tensor | None = None

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

    def check_draws(self) -> None:
        """ValueError unless the estimate holds its draws (`sampled_*`, `stratum_*`), as `estimate_bound`'s do."""
        draws = (
            self.sampled_timesteps,
            self.sampled_terms_bpd,
            self.sampled_x0_mse,
            self.stratum_bounds,
            self.stratum_kl_bpd,
        )
        if any(value is None for value in draws):
            raise ValueError("this estimate holds no per-draw data (sampled_*, stratum_*); estimate_bound records it.")

    def stratum_rate_bpd(self) -> torch.Tensor:
        """(B, S) unbiased estimate of the rate of the rate/distortion curve (`BoundResult.rate_bpd`) at the highest
        timestep of each stratum, t = bounds[s+1] - 1: the prior plus the estimates of the strata above stratum s,
        the bits received once the reverse process has produced x_t there (the lowest rate within the stratum)."""
        self.check_draws()
        return self.prior_bpd[:, None] + tail_sums(self.stratum_kl_bpd)


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


def student_t_quantile(confidence: float, dof: torch.Tensor | float) -> torch.Tensor:
    """The (1 + confidence) / 2 quantile of Student's t with `dof` ≥ 1 degrees of freedom (the normal quantile where
    dof = inf): the half-width, in standard errors, of a two-sided interval. float64 on the CPU, from scipy."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}.")
    dof = torch.as_tensor(dof, dtype=torch.float64).cpu()
    if torch.isnan(dof).any() or (dof < 1).any():
        raise ValueError("degrees of freedom must be at least 1.")
    from scipy import stats  # imported on use: `import ddpm_plus` stays light

    tail = (1 - confidence) / 2
    # The normal quantile is the limit dof = inf, where scipy's t distribution is wrong before scipy 1.8.
    quantiles = np.full(dof.shape, stats.norm.isf(tail))
    finite = np.isfinite(dof.numpy())
    quantiles[finite] = _t_upper_quantile(tail, dof.numpy()[finite], stats.t)
    return torch.from_numpy(quantiles)


def _t_upper_quantile(tail: float, dof: np.ndarray, t: Any) -> np.ndarray:
    """x with P(T > x) = tail: scipy's `t.isf`, refined by one Newton step on its survival function. The step makes
    the quantile accurate to ~1e-14 relative on every supported scipy (1.15, which Python 3.10 gets, inverts only to
    ~1e-11 at one degree of freedom), and leaves an already accurate one as it is."""
    x = t.isf(tail, dof)
    return x + (t.sf(x, dof) - tail) / t.pdf(x, dof)


# ---------------------------------------------------------------------------------------------------------------
# Bound terms at any plan
# ---------------------------------------------------------------------------------------------------------------


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
        model, scheduler, max_batch_size, clip_denoised, progress: as in `ddpm_plus.likelihood.variational_bound`.
        x0: images (B, C, H, W). 8-bit data in [-1, 1] when the plan holds t = 0 (the discretized decoder);
            the KL terms (t ≥ 1) accept any real data.
        timesteps: 0-based timesteps, (K,) for every image or (B, K) per image.
        generator: as in `variational_bound`: the source of the images' noise keys. The noise depends on (image, t)
            only: a timestep that appears twice for an image gives the same term, and the same as in
            `variational_bound` with the same generator(s).
    """
    network, scheduler, generator = prepare_evaluation(model, scheduler, x0, generator, max_batch_size)
    plan = _timestep_plan(timesteps, x0.shape[0], scheduler.config.num_train_timesteps)
    check_images(x0, network, needs_8bit=bool((plan == 0).any()))
    keys = draw_noise_keys(generator, x0.shape[0])
    return evaluate_plan(network, scheduler, x0, plan, keys, max_batch_size, clip_denoised, progress)


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


@dataclass
class PilotTerms:
    """The KL terms of a few pilot images on a grid of timesteps (`pilot_terms`), the measurement behind
    `pilot_profile`.

    Attributes:
        timesteps: (K,) long, the pilot timesteps (`pilot_timesteps`), increasing.
        terms_bpd: (B, K) float64, the KL term of each pilot image at each pilot timestep, in bits/dim.
        num_train_timesteps: T, the length of the chain.
    """

    timesteps: torch.Tensor
    terms_bpd: torch.Tensor
    num_train_timesteps: int

    def profile(self) -> torch.Tensor:
        """(T,) √(mean of KL_t²) over the pilot images, interpolated linearly in log space between the pilot
        timesteps (index 0 holds 0): a proposal profile for `make_strata`."""
        log_rms = self.terms_bpd.square().mean(0).sqrt().clamp(min=1e-30).log()
        log_profile = np.interp(np.arange(1, self.num_train_timesteps), self.timesteps.numpy(), log_rms.numpy())
        return torch.cat([torch.zeros(1, dtype=torch.float64), torch.from_numpy(log_profile).exp()])


def pilot_terms(
    model: Any,
    x0: torch.Tensor,
    scheduler: DDPMPlusScheduler | None = None,
    *,
    num_timesteps: int = 32,
    generator: GeneratorLike = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    clip_denoised: bool = False,
    progress: bool = True,
) -> PilotTerms:
    """The KL terms of a few pilot images at `pilot_timesteps(T, num_timesteps)` (geometrically spaced, dense at
    small t where they change fast). Costs B · num_timesteps network evaluations (fewer when timesteps coincide).
    Arguments as in `evaluate_terms`; the images may be continuous (no decoder term is evaluated)."""
    network, scheduler, generator = prepare_evaluation(model, scheduler, x0, generator, max_batch_size)
    check_images(x0, network, needs_8bit=False)
    num_steps = scheduler.config.num_train_timesteps
    grid = pilot_timesteps(num_steps, num_timesteps)
    plan = grid.expand(x0.shape[0], -1)
    keys = draw_noise_keys(generator, x0.shape[0])
    terms = evaluate_plan(network, scheduler, x0, plan, keys, max_batch_size, clip_denoised, progress)
    return PilotTerms(timesteps=grid, terms_bpd=terms.terms_bpd, num_train_timesteps=num_steps)


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

    The terms are measured by `pilot_terms` and interpolated linearly in log space (`PilotTerms.profile`); the root
    mean square makes p_t ∝ √E[KL_t²], the proposal of Nichol & Dhariwal 2021 (sec. 3.3). Arguments as in
    `pilot_terms`.
    """
    return pilot_terms(
        model,
        x0,
        scheduler,
        num_timesteps=num_timesteps,
        generator=generator,
        max_batch_size=max_batch_size,
        clip_denoised=clip_denoised,
        progress=progress,
    ).profile()


def _uniforms(generator: GeneratorLike, batch_size: int, shape: tuple[int, ...]) -> torch.Tensor:
    """U[0, 1) draws of shape (batch_size, *shape) on the CPU, per image when given one generator per image."""
    if isinstance(generator, list):
        return torch.cat([torch.rand((1, *shape), generator=item, dtype=torch.float64) for item in generator])
    return torch.rand((batch_size, *shape), generator=generator, dtype=torch.float64)


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
    for T = 1000). The result keeps the draws and the per-stratum estimates (`sampled_*`, `stratum_*`) for figures
    (`ddpm_plus.plots`).

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
    network, scheduler, generator = prepare_evaluation(model, scheduler, x0, generator, max_batch_size)
    check_images(x0, network, needs_8bit=True)
    if samples_per_stratum < 2:
        raise ValueError(f"samples_per_stratum must be at least 2 to estimate the variance, got {samples_per_stratum}.")
    profile = schedule_profile(scheduler) if profile is None else profile
    strata = make_strata(profile, scheduler.config.num_train_timesteps, num_strata)
    batch, draws = x0.shape[0], samples_per_stratum
    keys = draw_noise_keys(generator, batch)
    timestep_generator = generator if timestep_generator is None else check_generators(timestep_generator, batch)
    timesteps, weights = strata.sample(_uniforms(timestep_generator, batch, (strata.num_strata, draws)))
    plan = torch.cat([torch.zeros(batch, 1, dtype=torch.long), timesteps.reshape(batch, -1)], dim=1)
    terms = evaluate_plan(network, scheduler, x0, plan, keys, max_batch_size, clip_denoised, progress)
    weighted_kl = terms.terms_bpd[:, 1:].reshape(batch, -1, draws) * weights  # (B, S, m)
    variances = weighted_kl.var(dim=2, correction=1) / draws
    stratum_kl = weighted_kl.mean(2)
    prior, decoder, kl = scheduler.prior_bpd(x0.cpu().double()), terms.terms_bpd[:, 0], stratum_kl.sum(1)
    return BoundEstimate(
        total_bpd=prior + decoder + kl,
        standard_error=variances.sum(1).sqrt(),
        degrees_of_freedom=welch_satterthwaite_dof(variances, torch.tensor(draws - 1.0), dim=1),
        prior_bpd=prior,
        decoder_bpd=decoder,
        kl_bpd=kl,
        num_evaluations=plan.numel(),
        sampled_timesteps=plan[:, 1:],
        sampled_terms_bpd=terms.terms_bpd[:, 1:],
        sampled_x0_mse=terms.x0_mse[:, 1:],
        stratum_bounds=strata.bounds.repeat(batch, 1),
        stratum_kl_bpd=stratum_kl,
    )
