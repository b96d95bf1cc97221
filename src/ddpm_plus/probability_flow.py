"""The probability-flow ODE of a DDPM: its exact log-likelihood, in bits/dim on the 8-bit grid.

A discrete DDPMPlusScheduler becomes a continuous-time process (`ContinuousSchedule`): log ᾱ(s) for s ∈ [0, T-1]
is the monotone cubic (PCHIP) interpolant of the schedule's log ᾱ_t at the integer timesteps t, so ᾱ(s) agrees
with every beta schedule (trained betas and the capped cosine included) at the integers, and
β(s) = -d log ᾱ(s)/ds ≥ 0 is continuous. The forward SDE dx = -½β(s) x ds + √β(s) dW has the marginals
x_s = √ᾱ(s) x_0 + σ(s) ε, σ(s)² = 1 - ᾱ(s), and its c = 0 reverse (Song et al. 2021b, eq. 13) is the ODE

    dx/ds = f(x, s) = -½ β(s) (x + ∇log p_s(x)),   ∇log p_s(x) ≈ -ε̂(x, s) / σ(s),

with the network called at fractional timesteps s (ε̂ converted from an ε, x₀ or v prediction). An invertible
flow has an exact likelihood by the instantaneous change of variables (Chen et al. 2018):

    log p_0(x) = log N(x_{T-1}; 0, I) + ∫_0^{T-1} ∇·f(x_s, s) ds,

integrated from the data (s = 0) to s = T-1 by scipy's adaptive Dormand–Prince RK45 (`scipy.integrate.solve_ivp`),
the divergence by Hutchinson–Skilling probes z (E zᵀ(∂f/∂x)z = ∇·f; Rademacher or Gaussian, fixed along the path)
or exactly (D vector–Jacobian products). For 8-bit images, uniform dequantization x̃ = x + (2/255)(u - ½),
u ~ U[0, 1)^D, gives an upper bound on the discrete code length (Jensen):
-log P(x) ≤ E_u[-log p_0(x̃)] + D log(255/2). The derivation: docs/math.md, "The probability-flow ODE".

The noise of image i (dequantization u and probes z of its draw j) is keyed like the bound's: Philox keyed by the
image's noise key (`draw_noise_keys`) with counters [1, j, 0, 0] (u) and [2, j, 0, 0] (z), so results do not
depend on which process evaluates an image. scipy is a core dependency; this module stays in the package (saved
pipelines carry only the fixed-step `DDPMPlusPipeline.encode` / `decode`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .likelihood import (
    DEFAULT_MAX_BATCH_SIZE,
    GeneratorLike,
    Network,
    PerImageResults,
    check_images,
    draw_noise_keys,
    eval_mode,
    keyed_generator,
    prepare_evaluation,
)
from .scheduling_ddpm_plus import DDPMPlusScheduler, check_choice

DIVERGENCES = ("rademacher", "gaussian", "exact")
"""Hutchinson–Skilling probes (Rademacher or Gaussian) or the exact divergence (D vector–Jacobian products)."""
ODE_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
DEFAULT_TOLERANCE = 1e-5
"""rtol and atol of the adaptive solver unless told otherwise (Song et al. 2021b use 1e-5 for both)."""
BIN_WIDTH = 2.0 / 255.0
"""Width of one 8-bit level on [-1, 1]: the data k/127.5 - 1 are dequantized over [x - 1/255, x + 1/255)."""
DEQUANTIZATION_STREAM, PROBE_STREAM = 1, 2
"""The first Philox counter word of each draw's noise (the bound's ε uses 0)."""


# ---------------------------------------------------------------------------------------------------------------
# The continuous-time schedule
# ---------------------------------------------------------------------------------------------------------------


def pchip_slopes(values: torch.Tensor) -> torch.Tensor:
    """Derivatives at unit-spaced nodes of the monotone piecewise-cubic Hermite interpolant (Fritsch & Carlson
    1980; Fritsch & Butland 1984): the harmonic mean of the adjacent secants where they share a sign, else 0; the
    ends by the shape-preserving three-point formula. The interpolant is monotone wherever the data are."""
    secants = values.diff()
    slopes = torch.zeros_like(values)
    left, right = secants[:-1], secants[1:]
    same_sign = left * right > 0
    slopes[1:-1] = torch.where(same_sign, 2 / (1 / left.where(same_sign, 1.0) + 1 / right.where(same_sign, 1.0)), 0)
    slopes[0], slopes[-1] = _end_slope(secants[0], secants[1]), _end_slope(secants[-1], secants[-2])
    return slopes


def _end_slope(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """(3 m₀ - m₁)/2 from the two secants nearest an end, set to 0 against m₀'s sign and capped at 3 m₀ where the
    secants change sign."""
    slope = (3 * outer - inner) / 2
    if slope * outer <= 0:
        return torch.zeros_like(slope)
    if outer * inner < 0 and slope.abs() > 3 * outer.abs():
        return 3 * outer
    return slope


@dataclass(frozen=True)
class ContinuousSchedule:
    """The continuous-time view of a discrete schedule: log ᾱ(s), s ∈ [0, T-1], the PCHIP interpolant of the
    float64 log ᾱ_t at the integer (0-based) timesteps t; β(s) = -d log ᾱ/ds; σ(s) = √(1 - ᾱ(s)).

    Attributes:
        log_alpha_bar_nodes: (T,) log ᾱ_t of the scheduler's float64 tables.
        slopes: (T,) d log ᾱ/ds at the nodes (`pchip_slopes`).
    """

    log_alpha_bar_nodes: torch.Tensor
    slopes: torch.Tensor

    @classmethod
    def from_scheduler(cls, scheduler: DDPMPlusScheduler) -> ContinuousSchedule:
        """The view of a `DDPMPlusScheduler` (any beta schedule); ValueError where ᾱ_{T-1} = 0 (zero terminal SNR),
        whose log has no finite interpolant."""
        alphas_cumprod = scheduler.alphas_cumprod_f64
        if alphas_cumprod[-1] <= 0:
            raise ValueError(
                "the probability-flow ODE needs ᾱ > 0 at the last timestep; this schedule ends at ᾱ = 0 "
                "(rescale_betas_zero_snr)."
            )
        nodes = alphas_cumprod.log()
        return cls(nodes, pchip_slopes(nodes))

    @property
    def end(self) -> float:
        """The last timestep T - 1, where the ODE meets the prior N(0, I)."""
        return float(len(self.log_alpha_bar_nodes) - 1)

    def _piece(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cubic piece [k, k+1] that holds s, and u = s - k ∈ [0, 1]."""
        s = torch.as_tensor(s, dtype=torch.float64)
        if s.min() < 0 or s.max() > self.end:
            raise ValueError(f"s must lie in [0, {self.end:g}], got values in [{s.min():g}, {s.max():g}].")
        piece = s.floor().long().clamp(max=len(self.log_alpha_bar_nodes) - 2)
        return piece, s - piece

    def log_alpha_bar(self, s: float | torch.Tensor) -> torch.Tensor:
        """log ᾱ(s): the cubic Hermite form h₀₀ y_k + h₁₀ d_k + h₀₁ y_{k+1} + h₁₁ d_{k+1} on [k, k+1], h₀₀ = 1 - h₀₁."""
        k, u = self._piece(s)
        y0, y1 = self.log_alpha_bar_nodes[k], self.log_alpha_bar_nodes[k + 1]
        d0, d1 = self.slopes[k], self.slopes[k + 1]
        return (
            (2 * u**3 - 3 * u**2 + 1) * y0
            + (u**3 - 2 * u**2 + u) * d0
            + (3 * u**2 - 2 * u**3) * y1
            + (u**3 - u**2) * d1
        )

    def beta(self, s: float | torch.Tensor) -> torch.Tensor:
        """β(s) = -d log ᾱ(s)/ds, the derivative of the Hermite form (≥ 0: the interpolant is monotone)."""
        k, u = self._piece(s)
        y0, y1 = self.log_alpha_bar_nodes[k], self.log_alpha_bar_nodes[k + 1]
        d0, d1 = self.slopes[k], self.slopes[k + 1]
        slope = (6 * u**2 - 6 * u) * (y0 - y1) + (3 * u**2 - 4 * u + 1) * d0 + (3 * u**2 - 2 * u) * d1
        return -slope

    def alpha_bar(self, s: float | torch.Tensor) -> torch.Tensor:
        return self.log_alpha_bar(s).exp()

    def sigma(self, s: float | torch.Tensor) -> torch.Tensor:
        """σ(s) = √(1 - ᾱ(s)), the noise scale of x_s (eq. 4 at fractional s)."""
        return (-torch.expm1(self.log_alpha_bar(s))).sqrt()


def epsilon_prediction(
    model_output: torch.Tensor, x: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """ε̂ from an ε, x₀ or v prediction at noise level ᾱ (eq. 4 and the v of Salimans & Ho 2022)."""
    if prediction_type == "epsilon":
        return model_output
    sigma = (1 - alpha_bar).sqrt()
    if prediction_type == "sample":  # ε̂ = (x - √ᾱ x̂_0) / σ
        return (x - alpha_bar.sqrt() * model_output) / sigma
    check_choice("prediction_type", prediction_type, ODE_PREDICTION_TYPES)
    return sigma * x + alpha_bar.sqrt() * model_output  # v̂ = √ᾱ ε̂ - σ x̂_0  ⇒  ε̂ = σ x + √ᾱ v̂


def check_fractional_timesteps(model: Any) -> None:
    """ValueError for a network whose time embedding is a learned table of integer timesteps (diffusers'
    `time_embedding_type="learned"`): the ODE calls it at fractional timesteps."""
    network = getattr(model, "unet", model)
    config = getattr(network, "config", None)
    embedding = getattr(config, "time_embedding_type", None) if config is not None else None
    if embedding == "learned":
        raise ValueError(
            "the model's time embedding is a learned table of integer timesteps (time_embedding_type='learned'); "
            "the probability-flow ODE calls the network at fractional timesteps: use a positional embedding."
        )


# ---------------------------------------------------------------------------------------------------------------
# The ODE and its divergence
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class FlowModel:
    """The drift f(x, s) = -½β(s)(x - ε̂(x, s)/σ(s)) of the probability-flow ODE (Song et al. 2021b, eq. 13 for
    the VP SDE, eq. 11) of a network and a schedule."""

    network: Network
    schedule: ContinuousSchedule
    prediction_type: str

    def drift(self, x: torch.Tensor, s: float) -> torch.Tensor:
        """f(x, s) for a batch x (float64), one network evaluation; differentiable in x."""
        timesteps = torch.full((x.shape[0],), s, dtype=torch.float64)
        alpha_bar = self.schedule.alpha_bar(s).to(x.device)
        output = self.network(x, timesteps)[:, : x.shape[1]]  # the mean channels of a learned-variance output
        epsilon = epsilon_prediction(output, x, alpha_bar, self.prediction_type)
        score = -epsilon / (1 - alpha_bar).sqrt()  # ∇log p_s(x) ≈ -ε̂ / σ(s)
        return -0.5 * self.schedule.beta(s).to(x.device) * (x + score)


def drift_and_divergence(
    flow: FlowModel, x: torch.Tensor, s: float, probes: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """f(x, s) and, per row, ∇·f: the mean of zᵀ(∂f/∂x)z over the (M, B, ...) probes, or exact (probes None)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        drift = flow.drift(x, s)
        directions = probes if probes is not None else _basis_directions(x)
        divergence = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for index, direction in enumerate(directions):
            (row,) = torch.autograd.grad(drift, x, direction, retain_graph=index < len(directions) - 1)
            divergence += (row * direction).flatten(1).sum(1)  # zᵀJz, or J_ii for a basis vector e_i
    if probes is not None:
        divergence /= len(probes)
    return drift.detach(), divergence


def _basis_directions(x: torch.Tensor) -> list[torch.Tensor]:
    """The D basis vectors e_i (each for all rows at once): Σ_i e_iᵀ J e_i is the exact trace."""
    dimension = x[0].numel()
    return [
        torch.nn.functional.one_hot(torch.tensor(i), dimension).to(x).reshape(x.shape[1:]).expand_as(x)
        for i in range(dimension)
    ]


@dataclass
class FlowSolution:
    """The probability-flow ODE solved from x (s = 0) to s = T-1, per row; float64 tensors on the CPU.

    Attributes:
        log_density: (N,) log p_0(x) in nats: `prior_log_density` + the integrated divergence.
        prior_log_density: (N,) log N(x_{T-1}; 0, I).
        cumulative_divergence: (N, T) ∫_0^t ∇·f ds at each integer timestep t (column 0 is 0).
        noise: (N, C, H, W) x_{T-1}, the ODE's noise for x.
        num_function_evaluations: the solver's evaluations of f (each one network call on all N rows).
    """

    log_density: torch.Tensor
    prior_log_density: torch.Tensor
    cumulative_divergence: torch.Tensor
    noise: torch.Tensor
    num_function_evaluations: int


def solve_flow(flow: FlowModel, x: torch.Tensor, probes: torch.Tensor | None, rtol: float, atol: float) -> FlowSolution:
    """Integrate [x, ∫∇·f] from s = 0 to T-1 with scipy's RK45 (one adaptive step size for all rows, the error
    measured over all components), the dense output read at the integer timesteps.

    Args:
        flow: the ODE.
        x: (N, C, H, W) float64 starting points (on the network's device).
        probes: (M, N, C, H, W) Hutchinson probes fixed along the path, or None for the exact divergence.
        rtol, atol: the solver's tolerances.
    """
    from scipy.integrate import solve_ivp  # imported on use: `import ddpm_plus` stays light

    rows, shape, device = x.shape[0], x.shape, x.device

    def derivative(s: float, state: np.ndarray) -> np.ndarray:
        point = torch.from_numpy(state[:-rows]).reshape(shape).to(device)
        drift, divergence = drift_and_divergence(flow, point, s, probes)
        return torch.cat([drift.flatten(), divergence]).cpu().numpy()

    start = np.concatenate([x.detach().cpu().double().flatten().numpy(), np.zeros(rows)])
    end = flow.schedule.end
    timesteps = np.arange(len(flow.schedule.log_alpha_bar_nodes), dtype=np.float64)
    solution = solve_ivp(derivative, (0.0, end), start, method="RK45", rtol=rtol, atol=atol, t_eval=timesteps)
    if not solution.success:
        raise RuntimeError(f"the ODE solver failed: {solution.message}")
    path = torch.from_numpy(solution.y)
    noise = path[:-rows, -1].reshape(shape)
    prior = -0.5 * (noise.flatten(1).square().sum(1) + noise[0].numel() * math.log(2 * math.pi))
    cumulative = path[-rows:].contiguous()
    return FlowSolution(prior + cumulative[:, -1], prior, cumulative, noise, solution.nfev)


# ---------------------------------------------------------------------------------------------------------------
# Bits/dim of 8-bit images
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ODELikelihoodResult(PerImageResults):
    """The probability-flow ODE's bits/dim per image (uniform dequantization, `num_draws` draws per image), an
    upper bound on the discrete code length; float64 tensors on the CPU.

    Attributes:
        bits_per_dim: (B,) the mean over the draws.
        draws_bpd: (B, K) each draw's (-log p_0(x̃) + D log(255/2)) / (D ln 2).
        prior_bpd: (B,) mean over the draws of -log N(x_{T-1}; 0, I) / (D ln 2).
        path_bpd: (B, T) mean over the draws of -∫_0^t ∇·f ds / (D ln 2): the bits/dim that the flow from s = 0 to
            the integer timestep t accounts for (column 0 is 0; bits_per_dim = prior + path[:, -1] + log₂(255/2)).
        function_evaluations: (B,) the solver's evaluations of f in the solve that held the image.
        num_evaluations: network evaluations (rows × evaluations of f, summed over the solves); each also took
            one vector–Jacobian product per probe (D for the exact divergence).
    """

    bits_per_dim: torch.Tensor
    draws_bpd: torch.Tensor
    prior_bpd: torch.Tensor
    path_bpd: torch.Tensor
    function_evaluations: torch.Tensor
    num_evaluations: int

    def draw_standard_error(self) -> torch.Tensor:
        """(B,) standard error of each image's mean over its draws (NaN for a single draw)."""
        return self.draws_bpd.std(dim=1, correction=1) / math.sqrt(self.draws_bpd.shape[1])

    @property
    def mean_bpd(self) -> float:
        return self.bits_per_dim.mean().item()

    @property
    def standard_error_over_draws(self) -> float:
        """Standard error of `mean_bpd` from the draws only: √(Σ_i SE_i²) / N (the noise of this estimate of the
        images' expected values; NaN for a single draw)."""
        return (self.draw_standard_error().square().sum().sqrt() / len(self.bits_per_dim)).item()

    @property
    def standard_error_over_images(self) -> float:
        """Standard error of `mean_bpd` as an estimate of the population's mean (includes the draws' noise; NaN
        for a single image)."""
        return (self.bits_per_dim.std(correction=1) / math.sqrt(len(self.bits_per_dim))).item()


def check_ode_settings(num_draws: int, divergence: str, num_probes: int, rtol: float, atol: float) -> None:
    """ValueError for settings of `ode_likelihood` that have no meaning: draws or probes < 1, a tolerance ≤ 0."""
    check_choice("divergence", divergence, DIVERGENCES)
    for name, value in (("num_draws", num_draws), ("num_probes", num_probes)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not value > 0:
            raise ValueError(f"the solver tolerance {name} must be positive, got {value!r}.")


def check_flow_model(model: Any, scheduler: DDPMPlusScheduler) -> ContinuousSchedule:
    """The continuous-time schedule of a model's ODE, after refusing (ValueError) what has none: an integer-only
    time embedding, a prediction type without a score (`mean`), a schedule that ends at ᾱ = 0."""
    check_fractional_timesteps(model)
    prediction_type = scheduler.config.prediction_type
    if prediction_type not in ODE_PREDICTION_TYPES:
        raise ValueError(
            f"the probability-flow ODE needs a score: prediction_type {prediction_type!r} is not one of "
            f"{', '.join(ODE_PREDICTION_TYPES)}."
        )
    return ContinuousSchedule.from_scheduler(scheduler)


def ode_likelihood(
    model: Any,
    images: torch.Tensor,
    scheduler: DDPMPlusScheduler | None = None,
    *,
    num_draws: int = 1,
    divergence: str = "rademacher",
    num_probes: int = 1,
    rtol: float = DEFAULT_TOLERANCE,
    atol: float = DEFAULT_TOLERANCE,
    generator: GeneratorLike = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    progress: bool = True,
) -> ODELikelihoodResult:
    """Bits/dim of 8-bit images under the probability-flow ODE of a DDPM (the c = 0 member of the SDE view).

    Each image is dequantized `num_draws` times (x̃ = x + (2/255)(u - ½)); each draw's log p_0(x̃) is the solution
    of the augmented ODE (`solve_flow`) with its own Hutchinson probes. A draw's bits/dim,
    (-log p_0(x̃) + D log(255/2)) / (D ln 2), is an unbiased estimate (exact with `divergence="exact"`) of
    E_u[-log p_0(x̃)] in bits/dim, an upper bound on the discrete code length; the draws give its standard error
    (`draw_standard_error`). Images are solved together, `max_batch_size` // `num_draws` images (at least one) per
    solve: the adaptive step size is shared within a solve, so results depend on the grouping within the
    tolerances, never on anything else.

    Args:
        model: a `UNet2DModel`, a pipeline with `.unet` and `.scheduler`, or a callable `model(x_t, t)`, called at
            fractional timesteps t ∈ [0, T-1] (a learned integer time embedding is refused). Its prediction type
            is the scheduler's: epsilon, sample or v_prediction (learned-variance channels are ignored).
        images: 8-bit images (B, C, H, W) in [-1, 1] (values k/127.5 - 1).
        scheduler: a `DDPMPlusScheduler` (a DDPM scheduler config is converted); default: the pipeline's.
        num_draws: dequantization draws per image (K ≥ 1; K ≥ 2 for a standard error over the draws).
        divergence: "rademacher" or "gaussian" Hutchinson probes, or "exact" (D vector–Jacobian products per
            evaluation of f: for small images).
        num_probes: Hutchinson probes per draw, averaged (ignored by "exact").
        rtol, atol: the solver's relative and absolute tolerances (> 0).
        generator: CPU generator(s), as in `variational_bound`: the source of the images' noise keys.
        max_batch_size: (image, draw) rows per solve, i.e. per network call.
        progress: show a progress bar over the solves.
    """
    network, scheduler, generator = prepare_evaluation(model, scheduler, images, generator, max_batch_size)
    check_images(images, network, needs_8bit=True)
    check_ode_settings(num_draws, divergence, num_probes, rtol, atol)
    flow = FlowModel(network, check_flow_model(model, scheduler), scheduler.config.prediction_type)
    keys = draw_noise_keys(generator, images.shape[0])
    images_per_solve = max(1, max_batch_size // num_draws)
    parts = []
    with eval_mode(network):  # no dropout; `drift_and_divergence` switches gradients on
        for start in tqdm(range(0, len(keys), images_per_solve), desc="bits/dim (ODE)", disable=not progress):
            batch = slice(start, start + images_per_solve)
            parts.append(_solve_draws(flow, images[batch], keys[batch], num_draws, divergence, num_probes, rtol, atol))
    return ODELikelihoodResult.concat(parts)


def _solve_draws(
    flow: FlowModel,
    images: torch.Tensor,
    keys: Sequence[int],
    num_draws: int,
    divergence: str,
    num_probes: int,
    rtol: float,
    atol: float,
) -> ODELikelihoodResult:
    """One solve of the B × K (image, draw) rows of a few images (rows image-major: i·K + j)."""
    batch, shape = images.shape[0], tuple(images.shape[1:])
    offsets = np.stack([_dequantization_offset(key, draw, shape) for key in keys for draw in range(num_draws)])
    rows = images.double().cpu().repeat_interleave(num_draws, dim=0) + torch.from_numpy(offsets)
    probes = None
    if divergence != "exact":
        draws = [_probes(key, draw, num_probes, shape, divergence) for key in keys for draw in range(num_draws)]
        probes = torch.from_numpy(np.stack(draws, axis=1)).to(flow.network.device)
    solution = solve_flow(flow, rows.to(flow.network.device), probes, rtol, atol)
    nats_per_bit_dim = math.log(2) * math.prod(shape)
    draws_bpd = (-solution.log_density / nats_per_bit_dim + math.log2(1 / BIN_WIDTH)).reshape(batch, num_draws)
    prior_bpd = (-solution.prior_log_density / nats_per_bit_dim).reshape(batch, num_draws)
    path_bpd = (-solution.cumulative_divergence / nats_per_bit_dim).reshape(batch, num_draws, -1)
    return ODELikelihoodResult(
        bits_per_dim=draws_bpd.mean(1),
        draws_bpd=draws_bpd,
        prior_bpd=prior_bpd.mean(1),
        path_bpd=path_bpd.mean(1),
        function_evaluations=torch.full((batch,), solution.num_function_evaluations),
        num_evaluations=solution.num_function_evaluations * batch * num_draws,
    )


def _dequantization_offset(key: int, draw: int, shape: tuple[int, ...]) -> np.ndarray:
    """(2/255)(u - ½), u ~ U[0, 1)^D from Philox keyed by (key, [1, draw, 0, 0])."""
    return BIN_WIDTH * (keyed_generator(key, DEQUANTIZATION_STREAM, draw).random(shape) - 0.5)


def _probes(key: int, draw: int, num_probes: int, shape: tuple[int, ...], divergence: str) -> np.ndarray:
    """(M, *shape) Hutchinson probes of a draw: ±1 (Rademacher) or standard normals, Philox (key, [2, draw, 0, 0])."""
    generator = keyed_generator(key, PROBE_STREAM, draw)
    if divergence == "gaussian":
        return generator.standard_normal((num_probes, *shape))
    return generator.integers(0, 2, (num_probes, *shape)).astype(np.float64) * 2 - 1
