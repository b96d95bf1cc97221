"""Bits/dim of DDPM models: the exact variational bound over all T steps.

The bound (Ho et al. 2020, eq. 5) of an image x_0, in bits/dim, is

    L = L_T + Σ_{t=2}^{T} L_{t-1} + L_0
      = prior KL(q(x_T|x_0) ‖ N(0, I)) + Σ_t KL(q(x_{t-1}|x_t,x_0) ‖ p_θ(x_{t-1}|x_t)) + decoder -log p_θ(x_0|x_1),

each term taken with one draw x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε (eq. 4), exactly as improved-diffusion's
`calc_bpd_loop`. Timesteps here are 0-based as in diffusers: t = 0 is the decoder L_0 (eq. 13), t ≥ 1 are the KL
terms. Every term comes from `DDPMPlusScheduler`'s public math, one function per term: `prior_bpd` (L_T),
`vb_terms_from_moments` (the KL terms, eq. 5, and the decoder, eq. 13, through `discretized_gaussian_log_likelihood`),
with `q_sample` (eq. 4) and `p_mean_variance` (eq. 11); this module only organises the work:

* `variational_bound`: all T terms per image, many (image, timestep) pairs per network call, chunked to
  `max_batch_size`. The network runs in its own dtype (float32 or float64; float16/bfloat16 models are refused,
  call `.float()` first) and the bound is computed in float64 on the upcast outputs.
* `evaluate_plan`, the engine underneath: the terms at any plan of (image, timestep) pairs. The ddpm_plus package's
  `ddpm_plus.bound_estimation` builds on it (a fast unbiased estimate of the same bound, with its standard error).

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from .scheduling_ddpm_plus import DDPMPlusScheduler, check_8bit_data, check_generators

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


_Results = TypeVar("_Results", bound="PerImageResults")


class PerImageResults:
    """Dataclass base: per-image tensor fields (batch first; optional ones may be None) and a `num_evaluations`
    count, joined over batches."""

    @classmethod
    def concat(cls: type[_Results], parts: Sequence[_Results]) -> _Results:
        """Join the results of several batches of images into one; a field that is None in every part stays None."""
        per_image = {}
        for field in fields(cls):
            if field.name != "num_evaluations":
                values = [getattr(part, field.name) for part in parts]
                per_image[field.name] = None if all(value is None for value in values) else torch.cat(values)
        return cls(**per_image, num_evaluations=sum(part.num_evaluations for part in parts))


@dataclass
class BoundResult(PerImageResults):
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
        """(B, T) rate of the paper's rate/distortion curve (sec. 4.3, Fig. 5): the bits received once the reverse
        process has produced x_t (0-based t), L_T + Σ_{s>t} terms_bpd[:, s], since the term at s pays for x_{s-1}
        given x_s. So rate[:, T-1] is the prior and rate[:, 0] = total - decoder. Column t pairs with `x0_mse[:, t]`,
        the distortion of x̂_0 predicted from x_t."""
        return self.prior_bpd[:, None] + tail_sums(self.terms_bpd)


def tail_sums(values: torch.Tensor) -> torch.Tensor:
    """(B, N) the sums Σ_{s>t} values[:, s] of the columns after each column t (0 after the last one)."""
    from_column = values.flip(1).cumsum(1).flip(1)  # Σ_{s≥t}
    return torch.cat([from_column[:, 1:], torch.zeros_like(from_column[:, :1])], dim=1)


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Network:
    """A denoiser `forward(x_t, t)` with the dtype and device of its inputs, returning float64 outputs."""

    forward: Callable[..., Any]
    dtype: torch.dtype
    device: torch.device
    in_channels: int | None

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        conditioning = {} if class_labels is None else {"class_labels": class_labels.to(self.device)}
        output = self.forward(x_t.to(self.dtype), t.to(self.device), **conditioning)
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


def _resolve(model: Any, scheduler: Any | None, x0: torch.Tensor) -> tuple[Network, DDPMPlusScheduler]:
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
    return Network(network, dtype, device, in_channels), scheduler


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
def eval_mode(network: Network) -> Iterator[None]:
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


def check_images(x0: torch.Tensor, network: Network, needs_8bit: bool) -> None:
    """ValueError unless x0 is a finite float batch fitting the model (and 8-bit data when needed)."""
    if network.in_channels is not None and x0.shape[1] != network.in_channels:
        raise ValueError(f"the model takes {network.in_channels} channels, the images have {x0.shape[1]}.")
    if needs_8bit:
        check_8bit_data(x0, "images")
    elif x0.dtype not in (torch.float32, torch.float64) or not torch.isfinite(x0).all():
        raise ValueError("images must be finite float32 or float64 values.")


def check_class_labels(class_labels: torch.Tensor | None, batch_size: int) -> None:
    """ValueError unless `class_labels` is None or a (B,) integer tensor, one label per image."""
    if class_labels is None:
        return
    if not isinstance(class_labels, torch.Tensor) or class_labels.is_floating_point() or class_labels.is_complex():
        raise ValueError("class_labels must be an integer tensor with one label per image.")
    if class_labels.shape != (batch_size,):
        raise ValueError(
            f"class_labels must have shape ({batch_size},), one per image, got {tuple(class_labels.shape)}."
        )


_MAX_KEY = 2**63 - 1


def draw_noise_keys(generator: GeneratorLike, batch_size: int) -> list[int]:
    """One noise key per image: the first draw of its generator (or B draws of one generator)."""
    if isinstance(generator, list):
        keys = torch.cat([torch.randint(0, _MAX_KEY, (1,), generator=item) for item in generator])
    else:
        keys = torch.randint(0, _MAX_KEY, (batch_size,), generator=generator)
    return keys.tolist()


def keyed_generator(key: int, stream: int, index: int) -> np.random.Generator:
    """numpy's Philox keyed by an image's noise key, with counter [stream, index, 0, 0]: stream 0 is the bound's ε
    of timestep `index`; other streams serve other draws of the same image (the ddpm_plus package's ODE)."""
    return np.random.Generator(np.random.Philox(key=key, counter=[stream, index, 0, 0]))


def _pair_noise(keys: Sequence[int], shape: torch.Size) -> Callable[[int, int], np.ndarray]:
    """ε of (image i, timestep t): standard normals of the image's shape from Philox keyed by (k_i, t)."""

    def noise(image: int, timestep: int) -> np.ndarray:
        return keyed_generator(keys[image], 0, timestep).standard_normal(tuple(shape[1:]))

    return noise


# ---------------------------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------------------------


def prepare_evaluation(
    model: Any, scheduler: Any | None, x0: Any, generator: GeneratorLike, max_batch_size: int
) -> tuple[Network, DDPMPlusScheduler, GeneratorLike]:
    """Check the common arguments; returns the network, the DDPMPlusScheduler and the checked generator(s)."""
    _check_batch(x0)
    network, scheduler = _resolve(model, scheduler, x0)
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be positive, got {max_batch_size}.")
    return network, scheduler, check_generators(generator, x0.shape[0])


def evaluate_plan(
    network: Network,
    scheduler: DDPMPlusScheduler,
    x0: torch.Tensor,
    plan: torch.Tensor,
    keys: Sequence[int],
    max_batch_size: int,
    clip_denoised: bool,
    progress: bool,
    class_labels: torch.Tensor | None = None,
) -> BoundTerms:
    """The bound terms at a (B, K) plan of timesteps, `max_batch_size` (image, timestep) pairs per network call.

    The engine of `variational_bound` (and of the package's estimator): `network` and `scheduler` as returned by
    `prepare_evaluation`, `keys` the images' noise keys (`draw_noise_keys`), the other arguments as in
    `variational_bound`. The pairs are evaluated in column-major order (p = k·B + i).
    """
    batch, columns = plan.shape
    num_pairs = batch * columns
    images = x0.to(network.device, torch.float64)
    flat_plan = plan.t().reshape(-1)
    noise = _pair_noise(keys, x0.shape)
    results = torch.empty(3, num_pairs, dtype=torch.float64)
    starts = range(0, num_pairs, max_batch_size)
    with eval_mode(network):
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
                None if class_labels is None else class_labels[rows],
            )
    terms, x0_mse, eps_mse = (values.reshape(columns, batch).t().contiguous() for values in results)
    return BoundTerms(terms, x0_mse, eps_mse)


def _evaluate_pairs(
    network: Network,
    scheduler: DDPMPlusScheduler,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    clip_denoised: bool,
    class_labels: torch.Tensor | None,
) -> torch.Tensor:
    """(3, N) bound term (bits/dim), x̂_0 MSE and ε̂ MSE of N (image, timestep) pairs in one network call."""
    x_t = scheduler.q_sample(x0, noise, t)  # eq. 4, float64
    moments = scheduler.p_mean_variance(network(x_t, t, class_labels), x_t, t, clip_denoised=clip_denoised)
    terms = scheduler.vb_terms_from_moments(x0, x_t, t, moments.mean, moments.log_variance)  # eq. 5, 13
    pred_x0 = moments.pred_original_sample
    pred_noise = scheduler.convert_prediction(pred_x0, x_t, t, to="epsilon", prediction_type="sample")
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
    class_labels: torch.Tensor | None = None,
) -> BoundResult:
    """The exact variational bound (eq. 5) in bits/dim of each image, over all T timesteps.

    Same definition as improved-diffusion's `calc_bpd_loop`: one noise draw per image and timestep (keyed by the
    image's noise key and t, see the module docstring), the KL term for t ≥ 1, the discretized decoder for t = 0,
    plus the prior L_T. The decoder is exact (log-CDF based) where the reference uses a tanh approximation of the
    normal CDF. The total is one draw of the expected bound E_ε[L]; `ddpm_plus.bound_estimation.estimate_bound`
    with the same generator(s) estimates this very value.

    Args:
        model: a `UNet2DModel`, a pipeline with `.unet` and `.scheduler`, or a callable `model(x_t, t)` returning a
            tensor or an object with `.sample`. Its output is what the scheduler's prediction and variance types
            expect (doubled channels for learned variances). Modules run in eval mode (restored afterwards) and
            get inputs in their parameters' dtype; other callables get float32 inputs and are called as they are.
            float16/bfloat16 modules are refused: the bound is defined for the float32 (or float64) network.
        x0: 8-bit images (B, C, H, W) in [-1, 1] (values k/127.5 - 1).
        scheduler: a `DDPMPlusScheduler` (a DDPM scheduler config is converted); default: the pipeline's.
        generator: a CPU `torch.Generator`, one per image, or None for torch's global generator: the source of the
            images' noise keys (see the module docstring).
        max_batch_size: (image, timestep) pairs per network call. The network sees B·T inputs in chunks of
            `max_batch_size`; the results do not depend on the chunking.
        clip_denoised: clip x̂_0 to [-1, 1] before forming the reverse mean (improved-diffusion's option).
        progress: show a tqdm progress bar.
        class_labels: (B,) integer class labels of a class-conditional model, one per image (passed to the UNet
            as `class_labels`).
    """
    network, scheduler, generator = prepare_evaluation(model, scheduler, x0, generator, max_batch_size)
    check_images(x0, network, needs_8bit=True)
    check_class_labels(class_labels, x0.shape[0])
    num_steps = scheduler.config.num_train_timesteps
    plan = torch.arange(num_steps).expand(x0.shape[0], -1)
    keys = draw_noise_keys(generator, x0.shape[0])
    terms = evaluate_plan(network, scheduler, x0, plan, keys, max_batch_size, clip_denoised, progress, class_labels)
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
