"""Figures of the variational bound (eq. 5): its terms per timestep and the rate–distortion curve (Ho et al. 2020,
sec. 4.3, Fig. 5), from a `BoundResult` (`variational_bound`) or a `BoundEstimate` (`estimate_bound`); and of the
probability-flow ODE's likelihood along s (`ode_figure`), next to the bound's terms when they are at hand.

`bound_figure_data` computes exactly what is plotted (`BoundFigureData`, numpy arrays); `bound_figure` draws it on a
`matplotlib.figure.Figure` (no pyplot, so no global state) and `save_bound_figure` writes it to a file. matplotlib is
the optional extra `ddpm_plus[plot]`, imported when a figure is drawn. Timesteps are 0-based as in diffusers.

Panel (a), the terms of the bound in bits/dim on a log axis, with the decoder L_0 at t = 0 and the prior L_T at t = T:
* exact bound: the mean over the images of the KL term at each t = 1..T-1;
* estimate: each (image, timestep) draw of the estimator as a faint point and, with `pilot=` (`pilot_terms`), the
  pilot measurement: the mean over the pilot images at each pilot timestep, with its standard error.

Panel (b), rate against distortion. The rate at t is the bits received once the reverse process has produced x_t
(`BoundResult.rate_bpd`), the distortion the RMSE of x̂_0 on the [0, 255] scale, 127.5 √(mean of `x0_mse[:, t]` over
the images), as in Fig. 5, on a log axis (unclipped, x̂_0 = (x_t - √(1-ᾱ_t) ε̂)/√ᾱ_t is far off near t = T). Points:
* exact bound: one point per timestep t = 0..T-1 (the mean rate over the images);
* estimate: the rate is not measured at every t. One point per stratum s: the unbiased estimate of the rate at the
  stratum's highest timestep, the lowest rate within the stratum (the prior plus the estimates of the strata above,
  `BoundEstimate.stratum_rate_bpd`), against the RMSE of the stratum's draws. The draws follow the proposal within
  the stratum, so this distortion is a proposal-weighted average over the stratum's timesteps.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ddpm_plus.bound_estimation import BoundEstimate, PilotTerms
from ddpm_plus.extras import import_extra
from ddpm_plus.likelihood import BoundResult
from ddpm_plus.probability_flow import BIN_WIDTH, ODELikelihoodResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PIXEL_SCALE = 127.5
"""Data on [-1, 1] are pixel values / 127.5 - 1: an RMSE on the model's scale times 127.5 is an RMSE in pixel values."""
FIGURE_SIZE = (11.0, 4.4)  # inches: two panels side by side
FIGURE_DPI = 150  # pixels per inch of the saved file and of rendered images (1650 x 660 pixels)
TITLE_SIZE, LABEL_SIZE, TICK_SIZE = 13, 11, 10  # points
MARKED_RATE_POINTS = 6  # points of the rate–distortion curve labelled with their timestep
DRAW_OPACITY_BUDGET = 200.0  # the estimator's draws share this much opacity (each between 0.05 and 0.6)


@dataclass
class BoundFigureData:
    """Exactly what `bound_figure` plots: float64 numpy arrays (int64 timesteps) and numbers.

    Attributes:
        num_train_timesteps: T; the prior is drawn at t = T.
        term_timesteps: (N,) the timestep of each KL term in panel (a): 1..T-1 (exact bound) or every draw
            (estimate, image by image).
        terms_bpd: (N,) the KL terms: the mean over the images at each t (exact bound) or each draw (estimate).
        decoder_bpd: the mean decoder term L_0 (t = 0).
        prior_bpd: the mean prior term L_T.
        total_bpd: the mean bound over the images.
        standard_error: the estimator's standard error of `total_bpd`; None for the exact bound.
        rate_timesteps: (M,) the timestep of each point in panel (b): 0..T-1 (exact bound) or the highest timestep
            of each stratum (estimate).
        rate_bpd: (M,) the mean rate over the images at those timesteps, in bits/dim.
        distortion_rmse: (M,) the RMSE of x̂_0 on the [0, 255] scale at those timesteps (in the stratum, for an
            estimate).
        is_estimate: whether the data come from a `BoundEstimate`.
        pilot_timesteps: (P,) the pilot timesteps, or None without a pilot measurement.
        pilot_mean_bpd: (P,) the mean KL term over the pilot images at each pilot timestep.
        pilot_standard_error: (P,) the standard error of that mean (sample standard deviation / √(pilot images);
            NaN for a single pilot image).
    """

    num_train_timesteps: int
    term_timesteps: np.ndarray
    terms_bpd: np.ndarray
    decoder_bpd: float
    prior_bpd: float
    total_bpd: float
    standard_error: float | None
    rate_timesteps: np.ndarray
    rate_bpd: np.ndarray
    distortion_rmse: np.ndarray
    is_estimate: bool
    pilot_timesteps: np.ndarray | None = None
    pilot_mean_bpd: np.ndarray | None = None
    pilot_standard_error: np.ndarray | None = None


# ---------------------------------------------------------------------------------------------------------------
# The data
# ---------------------------------------------------------------------------------------------------------------


def bound_figure_data(result: BoundResult | BoundEstimate, pilot: PilotTerms | None = None) -> BoundFigureData:
    """What `bound_figure` plots for an exact bound or an estimate, and a pilot measurement (see the module
    docstring)."""
    if isinstance(result, BoundEstimate):
        panels = _estimate_panels(result)
    elif isinstance(result, BoundResult):
        panels = _exact_panels(result)
    else:
        raise ValueError(f"expected a BoundResult or a BoundEstimate, got {type(result).__name__}.")
    return BoundFigureData(**panels, **_pilot_panel(pilot))


def _exact_panels(result: BoundResult) -> dict[str, Any]:
    num_steps = result.terms_bpd.shape[1]
    return {
        "num_train_timesteps": num_steps,
        "term_timesteps": np.arange(1, num_steps),
        "terms_bpd": result.terms_bpd.mean(0)[1:].numpy(),
        "standard_error": None,
        "rate_timesteps": np.arange(num_steps),
        "rate_bpd": result.rate_bpd().mean(0).numpy(),
        "distortion_rmse": _pixel_rmse(result.x0_mse.mean(0)),
        "is_estimate": False,
        **_mean_terms(result),
    }


def _estimate_panels(estimate: BoundEstimate) -> dict[str, Any]:
    estimate.check_draws()
    bounds = estimate.stratum_bounds[0]
    if not (estimate.stratum_bounds == bounds).all():
        raise ValueError(
            "the images were estimated with different strata; a figure needs the strata of one profile "
            "(estimate_bound with the same profile and num_strata for every batch)."
        )
    draws_per_stratum = estimate.sampled_x0_mse.reshape(len(estimate.total_bpd), len(bounds) - 1, -1)
    return {
        "num_train_timesteps": int(bounds[-1]),
        "term_timesteps": estimate.sampled_timesteps.reshape(-1).numpy(),
        "terms_bpd": estimate.sampled_terms_bpd.reshape(-1).numpy(),
        "standard_error": estimate.mean_standard_error,
        "rate_timesteps": (bounds[1:] - 1).numpy(),
        "rate_bpd": estimate.stratum_rate_bpd().mean(0).numpy(),
        "distortion_rmse": _pixel_rmse(draws_per_stratum.mean((0, 2))),
        "is_estimate": True,
        **_mean_terms(estimate),
    }


def _mean_terms(result: BoundResult | BoundEstimate) -> dict[str, Any]:
    return {
        "decoder_bpd": result.decoder_bpd.mean().item(),
        "prior_bpd": result.prior_bpd.mean().item(),
        "total_bpd": result.total_bpd.mean().item(),
    }


def _pilot_panel(pilot: PilotTerms | None) -> dict[str, Any]:
    if pilot is None:
        return {}
    terms = pilot.terms_bpd.numpy()
    if len(terms) < 2:
        standard_error = np.full(terms.shape[1], math.nan)
    else:
        standard_error = terms.std(0, ddof=1) / math.sqrt(len(terms))
    return {
        "pilot_timesteps": pilot.timesteps.numpy(),
        "pilot_mean_bpd": terms.mean(0),
        "pilot_standard_error": standard_error,
    }


def _pixel_rmse(mean_squared_error: torch.Tensor) -> np.ndarray:
    """The RMSE on the [0, 255] pixel scale of a mean squared error on the [-1, 1] scale: 127.5 √MSE."""
    return PIXEL_SCALE * np.sqrt(mean_squared_error.numpy())


# ---------------------------------------------------------------------------------------------------------------
# The figure
# ---------------------------------------------------------------------------------------------------------------


def bound_figure(
    result: BoundResult | BoundEstimate, *, pilot: PilotTerms | None = None, model_name: str | None = None
) -> Figure:
    """The two panels of the bound (see the module docstring) on a new `matplotlib.figure.Figure`, not saved.

    Args:
        result: the exact bound (`variational_bound`) or an estimate (`estimate_bound`) of some images.
        pilot: a pilot measurement (`pilot_terms`) to show in panel (a).
        model_name: named in the title.
    """
    import_extra("matplotlib", "plot")
    from matplotlib.figure import Figure

    data = bound_figure_data(result, pilot)
    figure = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI, layout="tight")
    terms_axes, rate_axes = figure.subplots(1, 2)
    _draw_terms(terms_axes, data)
    _draw_rate_distortion(rate_axes, data)
    figure.suptitle(_title(data, model_name), fontsize=TITLE_SIZE, parse_math=False)  # a name may hold "$"
    return figure


def save_bound_figure(
    result: BoundResult | BoundEstimate,
    path: str | os.PathLike,
    *,
    pilot: PilotTerms | None = None,
    model_name: str | None = None,
) -> Path:
    """Write `bound_figure(result, pilot=pilot, model_name=model_name)` to `path` (the format from its suffix, e.g.
    PNG, at FIGURE_DPI; missing folders are created); returns the path."""
    return _save(bound_figure(result, pilot=pilot, model_name=model_name), path)


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    """Write a figure (format from the suffix, at its dpi), creating missing folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def figure_image(figure: Figure) -> Image.Image:
    """The figure rendered by matplotlib's Agg canvas at its dpi, as an RGB PIL image (e.g. for TensorBoard)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")


def _title(data: BoundFigureData, model_name: str | None) -> str:
    value = f"{data.total_bpd:.4f} bits/dim"
    if data.standard_error is not None:
        value += f" (estimate ± {data.standard_error:.4f} standard error)"
    return f"{model_name or 'variational bound'}: {value}"


def _draw_terms(axes: Axes, data: BoundFigureData) -> None:
    """Panel (a): the KL terms per timestep, the decoder at t = 0, the prior at t = T, and the pilot measurement."""
    if data.is_estimate:
        faint = float(np.clip(DRAW_OPACITY_BUDGET / data.terms_bpd.size, 0.05, 0.6))  # many draws: fainter
        axes.scatter(
            data.term_timesteps, data.terms_bpd, s=8, alpha=faint, linewidths=0, color="C0",
            label="KL term, each sampled (image, timestep)",
        )  # fmt: skip
    else:
        axes.plot(data.term_timesteps, data.terms_bpd, color="C0", label="KL term (mean over images)")
    if data.pilot_timesteps is not None:
        axes.errorbar(
            data.pilot_timesteps, data.pilot_mean_bpd, yerr=data.pilot_standard_error, fmt="o", markersize=3,
            capsize=2, color="C1", label="pilot: mean ± standard error",
        )  # fmt: skip
    for t, value, name, marker, color in (
        (0, data.decoder_bpd, "decoder $L_0$ (t = 0)", "s", "C3"),
        (data.num_train_timesteps, data.prior_bpd, "prior $L_T$ (t = T)", "^", "C2"),
    ):
        axes.scatter([t], [value], s=40, marker=marker, color=color, zorder=3, label=f"{name}: {value:.3g}")
    axes.set_yscale("log")
    _label(
        axes,
        "(a) terms of the bound (eq. 5)",
        f"timestep t (T = {data.num_train_timesteps})",
        "term (bits/dim)",
        legend_location="upper right",
    )


def _draw_rate_distortion(axes: Axes, data: BoundFigureData) -> None:
    """Panel (b): distortion against rate, a few points labelled with their timestep."""
    if data.is_estimate:
        axes.plot(data.rate_bpd, data.distortion_rmse, "o-", markersize=3, color="C0", label="estimate, per stratum")
    else:
        axes.plot(data.rate_bpd, data.distortion_rmse, color="C0", label="exact bound (mean over images)")
    for index in _marked_points(data.rate_bpd, MARKED_RATE_POINTS):
        point = (data.rate_bpd[index], data.distortion_rmse[index])
        axes.scatter(*point, s=20, color="C3", zorder=3)
        axes.annotate(
            f"t={data.rate_timesteps[index]}", point, xytext=(5, 3), textcoords="offset points", fontsize=TICK_SIZE
        )
    axes.set_yscale("log")  # from about one pixel value at t = 0 to far beyond 255 near t = T
    axes.margins(0.1)
    _label(
        axes,
        "(b) rate–distortion (Ho et al. 2020, Fig. 5)",
        "rate: bits/dim received once $x_t$ is produced",
        "distortion: RMSE of $\\hat{x}_0$ on [0, 255]",
        legend_location="upper right",
    )


def _marked_points(values: np.ndarray, count: int) -> list[int]:
    """Indices of up to `count` points whose values are nearest to `count` evenly spaced values from the smallest
    to the largest: labels spread along the rate axis."""
    targets = np.linspace(values.min(), values.max(), count)
    return sorted({int(np.abs(values - target).argmin()) for target in targets})


def _label(axes: Axes, title: str, x_label: str, y_label: str, *, legend_location: str) -> None:
    axes.set_title(title, fontsize=LABEL_SIZE + 1)
    axes.set_xlabel(x_label, fontsize=LABEL_SIZE)
    axes.set_ylabel(y_label, fontsize=LABEL_SIZE)
    axes.tick_params(labelsize=TICK_SIZE)
    axes.grid(alpha=0.3)
    axes.legend(loc=legend_location, fontsize=TICK_SIZE)


# ---------------------------------------------------------------------------------------------------------------
# The probability-flow ODE along s
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ODEFigureData:
    """What `ode_figure` plots: float64 numpy arrays over the integer timesteps, means over the images.

    Attributes:
        step_bpd: (T-1,) the ODE's log-density change from t-1 to t, t = 1..T-1, in bits/dim: path[t] - path[t-1]
            of `ODELikelihoodResult.path_bpd` (its sign is the flow's: negative where it expands volume).
        rate_bpd: (T,) the bits/dim from the prior down to x_t: prior + path[T-1] - path[t]; at t = 0 the
            continuous code length of the dequantized image (the total less log₂(255/2)).
        total_bpd: the mean ODE bits/dim.
        bound_terms_bpd: (T-1,) the bound's KL terms at t = 1..T-1, or None without a bound.
        bound_rate_bpd: (T,) the bound's rate (`BoundResult.rate_bpd`), or None.
        bound_total_bpd: the mean bound, or None.
    """

    step_bpd: np.ndarray
    rate_bpd: np.ndarray
    total_bpd: float
    bound_terms_bpd: np.ndarray | None
    bound_rate_bpd: np.ndarray | None
    bound_total_bpd: float | None


def ode_figure_data(result: ODELikelihoodResult, bound: BoundResult | None = None) -> ODEFigureData:
    """The arrays of `ode_figure` (see `ODEFigureData`)."""
    path = result.path_bpd.mean(0)
    rate = result.prior_bpd.mean() + path[-1] - path
    return ODEFigureData(
        step_bpd=path.diff().numpy(),
        rate_bpd=rate.numpy(),
        total_bpd=result.mean_bpd,
        bound_terms_bpd=None if bound is None else bound.terms_bpd[:, 1:].mean(0).numpy(),
        bound_rate_bpd=None if bound is None else bound.rate_bpd().mean(0).numpy(),
        bound_total_bpd=None if bound is None else bound.total_bpd.mean().item(),
    )


def ode_figure(
    result: ODELikelihoodResult, *, bound: BoundResult | None = None, model_name: str | None = None
) -> Figure:
    """Two panels on a new `matplotlib.figure.Figure`: (a) the ODE's log-density change per unit of s, with the
    bound's KL terms per timestep when `bound` (a `variational_bound` of the same images) is given; (b) the bits/dim
    from the prior down to each timestep, the ODE's and the bound's rate."""
    import_extra("matplotlib", "plot")
    from matplotlib.figure import Figure

    data = ode_figure_data(result, bound)
    figure = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI, layout="tight")
    step_axes, rate_axes = figure.subplots(1, 2)
    timesteps = np.arange(len(data.rate_bpd))
    step_axes.plot(timesteps[1:], data.step_bpd, color="C1", label="ODE: log-density change per unit s")
    rate_axes.plot(timesteps, data.rate_bpd, color="C1", label=f"ODE: {data.total_bpd:.4f} bits/dim")
    if data.bound_terms_bpd is not None:
        step_axes.plot(timesteps[1:], data.bound_terms_bpd, color="C0", label="bound: KL term per timestep")
        rate_axes.plot(timesteps, data.bound_rate_bpd, color="C0", label=f"bound: {data.bound_total_bpd:.4f} bits/dim")
    step_axes.set_yscale("symlog", linthresh=1e-4)
    _label(step_axes, "(a) bits/dim per timestep", "timestep s", "bits/dim", legend_location="upper right")
    _label(rate_axes, "(b) bits/dim from the prior down to s", "timestep s", "bits/dim", legend_location="lower left")
    figure.suptitle(
        f"{model_name or 'probability-flow ODE'}: {data.total_bpd:.4f} bits/dim "
        f"(ODE, +log₂(255/2) = {math.log2(1 / BIN_WIDTH):.3f} for the 8-bit bins)",
        fontsize=TITLE_SIZE,
        parse_math=False,  # a name may hold "$"
    )
    return figure


def save_ode_figure(
    result: ODELikelihoodResult,
    path: str | os.PathLike,
    *,
    bound: BoundResult | None = None,
    model_name: str | None = None,
) -> Path:
    """Write `ode_figure(result, bound=bound, model_name=model_name)` to `path`; returns the path."""
    return _save(ode_figure(result, bound=bound, model_name=model_name), path)
