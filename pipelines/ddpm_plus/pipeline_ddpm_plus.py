# Copyright 2026 The ddpm_plus authors. Licensed under the Apache License, Version 2.0.
"""DDPMPlusPipeline: unconditional DDPM sampling (Algorithm 2) and exact bits/dim (eq. 5) in one diffusers pipeline.

This file follows diffusers' single-file policy: it imports only torch, numpy, diffusers and two sibling modules
(the scheduler and the likelihood engine), so it travels inside Hub repositories. `save_pretrained` copies the three
files into the saved directory and records them in `model_index.json`, so the directory loads with plain diffusers:
`DiffusionPipeline.from_pretrained(path, trust_remote_code=True)`. With the ddpm_plus package installed,
`DDPMPlusPipeline.from_pretrained(path)` loads the same directory without running any code from it, and `push_to_hub`
uploads it with a model card. This file never imports the package: the package's modules import this one.

Equation numbers refer to Ho et al. 2020, "Denoising Diffusion Probabilistic Models".
"""

import inspect
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.utils import BaseOutput, is_torch_xla_available
from diffusers.utils.torch_utils import randn_tensor

from .likelihood import DEFAULT_MAX_BATCH_SIZE, variational_bound
from .scheduling_ddpm_plus import (
    LEARNED_VARIANCE_TYPES,
    DDPMPlusScheduler,
    check_8bit_data,
    check_choice,
    check_generators,
    respaced_timesteps,
)

if is_torch_xla_available():
    import torch_xla.core.xla_model as xm

    XLA_AVAILABLE = True
else:
    XLA_AVAILABLE = False

OUTPUT_TYPES = ("pil", "np", "pt")

# The code files a saved directory ships, and the `model_index.json` entries that point at them. diffusers resolves
# the pipeline's relative imports next to the pipeline file, so the scheduler and likelihood files sit at the root.
PIPELINE_FILE = "pipeline_ddpm_plus.py"
SCHEDULER_FILE = "scheduling_ddpm_plus.py"
LIKELIHOOD_FILE = "likelihood.py"
CODE_FILES = {"pipeline": PIPELINE_FILE, "scheduler": SCHEDULER_FILE, "likelihood": LIKELIHOOD_FILE}
SCHEDULER_ENTRY = [Path(SCHEDULER_FILE).stem, "DDPMPlusScheduler"]
# The pipeline classes whose saved directories name shipped code in `model_index.json` (see `load_config`).
SAVED_PIPELINE_CLASSES = ("DDPMPlusPipeline", "DDPMPlusPosteriorPipeline")
# What `from_pretrained` fetches from a Hub repository: configurations and safetensors weights, never code.
HUB_ALLOW_PATTERNS = [
    "model_index.json",
    "*/config.json",
    "*/scheduler_config.json",
    "*/*.safetensors",
    "*/*.safetensors.index.json",
]
# The file of each component folder that `from_pretrained` reads first, and the components that carry weights.
COMPONENT_CONFIG_FILES = {"unet": "config.json", "scheduler": "scheduler_config.json"}
WEIGHTED_COMPONENTS = ("unet",)
WEIGHTS_PATTERNS = ("diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model*.bin")
# The Hub upload that an installed ddpm_plus package provides (`ddpm_plus.hub.push_pipeline_to_hub`, which writes the
# model card from the package's template), declared as an entry point in the package's pyproject.toml.
HUB_UPLOAD_ENTRY_POINT = {"group": "ddpm_plus.uploads", "name": "push_pipeline_to_hub"}


@dataclass
class LikelihoodOutput(BaseOutput):
    """Per-image terms of the variational bound (eq. 5), in bits/dim; float64 tensors on the CPU.

    Args:
        bits_per_dim: the bound L = L_T + Σ_{t>1} L_{t-1} + L_0 per image, shape (B,).
        prior_bpd: the prior term L_T per image, shape (B,).
        terms_bpd: shape (B, T); column t (0-based, as diffusers' timesteps) is the KL term L_t for t > 0 and the
            discretized decoder NLL L_0 for t = 0.
        decoder_bpd: the decoder term L_0 per image (column 0 of `terms_bpd`), shape (B,).
        x0_mse: shape (B, T), mean squared error of the predicted x_0 at each t (the distortion of the paper's
            rate/distortion curve, sec. 4.3).
        eps_mse: shape (B, T), mean squared error of the predicted ε at each t.
    """

    bits_per_dim: torch.Tensor
    prior_bpd: torch.Tensor
    terms_bpd: torch.Tensor
    decoder_bpd: torch.Tensor
    x0_mse: torch.Tensor
    eps_mse: torch.Tensor


def source_file(kind: str) -> Path:
    """Path of a code file shipped in saved directories: `kind` is "pipeline", "scheduler" or "likelihood".

    The files are read from where the running modules were imported, so a pipeline loaded with
    `trust_remote_code=True` (without the ddpm_plus package) saves self-contained directories as well.
    """
    check_choice("code file kind", kind, tuple(CODE_FILES))
    defined_there = {"pipeline": DDPMPlusPipeline, "scheduler": DDPMPlusScheduler, "likelihood": variational_bound}
    return Path(inspect.getfile(defined_there[kind]))


def image_size(sample_size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) of a UNet's `sample_size` configuration: one side of square images, or (height, width)."""
    sides = (sample_size, sample_size) if isinstance(sample_size, int) else sample_size
    positive_ints = isinstance(sides, Sequence) and all(
        isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in sides
    )
    if not positive_ints or len(sides) != 2:
        raise ValueError(
            f"sample_size must be a positive integer or a (height, width) pair of them, got {sample_size!r}."
        )
    return sides[0], sides[1]


class PipelineLoadError(OSError, ValueError):
    """A folder or Hub id that cannot be loaded as a pipeline, with a message naming the file at fault. An `OSError`
    as diffusers raises for missing files, and a `ValueError` as for invalid repository ids."""


class DDPMPlusPipeline(DiffusionPipeline):
    """Unconditional image generation with a DDPM, plus the exact variational bound in bits/dim.

    Sampling is the same computation as diffusers' `DDPMPipeline` (same noise draws, same scheduler calls, same
    post-processing), so with a DDPM scheduler configuration it gives bitwise-identical images for the same UNet
    and generator. A diffusers `DDPMScheduler` passed in is converted to `DDPMPlusScheduler` with `from_config`
    (same configuration and samples), which adds the likelihood math; other schedulers are used as they are for
    sampling.

    Args:
        unet: a `UNet2DModel`; for `variance_type="learned"` or `"learned_range"` it outputs twice its input
            channels (the second half parameterizes the variance).
        scheduler: a `DDPMPlusScheduler` (or a scheduler to sample with, see above).
    """

    model_cpu_offload_seq = "unet"
    # The name this class's file has in saved directories; a subclass shipped in its own file sets its own.
    _code_file = PIPELINE_FILE

    def __init__(self, unet: UNet2DModel, scheduler: DDPMPlusScheduler):
        super().__init__()
        if type(scheduler) is DDPMScheduler:
            scheduler = DDPMPlusScheduler.from_config(scheduler.config)
        self.register_modules(unet=unet, scheduler=scheduler)
        self._check_components()

    # ------------------------------------------------------------------------------------------------------------
    # Sampling
    # ------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 1000,
        output_type: str = "pil",
        return_dict: bool = True,
        stochasticity: float | None = None,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        timestep_respacing: str | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Generate images by ancestral sampling (Algorithm 2).

        Args:
            batch_size: number of images.
            generator: a `torch.Generator`, or one per image for per-image reproducibility.
            num_inference_steps: number of denoising steps, 1..num_train_timesteps (fewer steps respace the chain
                by the scheduler's `timestep_spacing`).
            output_type: "pil" (list of `PIL.Image`), "np" (float array (B, H, W, C) in [0, 1]) or "pt" (float
                tensor (B, C, H, W) in [0, 1]).
            return_dict: return an `ImagePipelineOutput` instead of a 1-tuple.
            stochasticity: the reverse-SDE noise level η ∈ [0, 1] of `DDPMPlusScheduler.step` (0: deterministic
                probability-flow / DDIM limit, 1: ancestral); `None` (default) is the DDPM step, bitwise identical
                to diffusers' `DDPMPipeline`.
            class_labels: for a class-conditional UNet (`num_class_embeds`), the class of every image (one int) or
                of each image; must be None for an unconditional one.
            timestep_respacing: instead of `num_inference_steps`, improved-/guided-diffusion's respacing ("250",
                "10,20,30", "ddim50"): the timesteps of `respaced_timesteps`, as the upstream samplers take them.
        """
        timesteps = None
        if timestep_respacing is not None:
            timesteps = respaced_timesteps(self.scheduler.config.num_train_timesteps, timestep_respacing)
        steps = num_inference_steps if timesteps is None else len(timesteps)
        generator = self._check_sampling_arguments(batch_size, generator, steps, output_type)
        self._check_components()
        conditioning = self._conditioning(class_labels, batch_size)
        image_shape = (batch_size, self.unet.config.in_channels, *self._image_size())

        # The initial noise is drawn as diffusers' DDPMPipeline draws it (on the CPU for "mps").
        device = self._execution_device
        if device.type == "mps":
            image = randn_tensor(image_shape, generator=generator, dtype=self.unet.dtype).to(device)
        else:
            image = randn_tensor(image_shape, generator=generator, device=device, dtype=self.unet.dtype)

        if timesteps is None:
            self.scheduler.set_timesteps(num_inference_steps)
        else:
            self.scheduler.set_timesteps(timesteps=timesteps)
        step_kwargs = {} if stochasticity is None else {"stochasticity": stochasticity}
        for t in self.progress_bar(self.scheduler.timesteps):
            model_output = self.unet(image, t, **conditioning).sample
            image = self.scheduler.step(model_output, t, image, generator=generator, **step_kwargs).prev_sample
            if XLA_AVAILABLE:
                xm.mark_step()
        return self._output(image, output_type, return_dict)

    def _output(self, image: torch.Tensor, output_type: str, return_dict: bool) -> ImagePipelineOutput | tuple:
        """Samples in [-1, 1] as diffusers' DDPMPipeline returns them: [0, 1] tensors, arrays or PIL images.

        numpy has no bfloat16: bfloat16 samples become float32 arrays (exactly; diffusers' DDPMPipeline fails there).
        """
        image = (image / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            if image.dtype == torch.bfloat16:
                image = image.float()
            image = image.cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                image = self.numpy_to_pil(image)

        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)

    def _image_size(self) -> tuple[int, int]:
        return image_size(self.unet.config.sample_size)

    def _conditioning(self, class_labels: Any, batch_size: int) -> dict[str, torch.Tensor]:
        """The UNet's keyword arguments for the classes: `class_labels` as a (B,) long tensor for a class-conditional
        UNet, nothing for an unconditional one; a `ValueError` for labels that do not fit the UNet."""
        labels = class_label_tensor(class_labels, batch_size, self.unet.config.get("num_class_embeds"))
        return {} if labels is None else {"class_labels": labels.to(self._execution_device)}

    def _check_sampling_arguments(
        self,
        batch_size: int,
        generator: torch.Generator | list[torch.Generator] | None,
        num_inference_steps: int,
        output_type: str,
    ) -> torch.Generator | list[torch.Generator] | None:
        """Raise a `ValueError` for a bad sampling argument; returns the checked generator(s)."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        check_choice("output_type", output_type, OUTPUT_TYPES)
        num_train_timesteps = self.scheduler.config.num_train_timesteps
        if not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be an integer between 1 and the scheduler's num_train_timesteps "
                f"({num_train_timesteps}), got {num_inference_steps!r}."
            )
        return check_generators(generator, batch_size)

    def _check_components(self) -> None:
        """Raise a `ValueError` when the UNet's output channels do not fit the scheduler's variance type."""
        in_channels, out_channels = self.unet.config.in_channels, self.unet.config.out_channels
        variance_type = self.scheduler.config.get("variance_type")
        learned = variance_type in LEARNED_VARIANCE_TYPES
        expected = 2 * in_channels if learned else in_channels
        if out_channels != expected:
            hint = (
                "a learned-variance model needs twice its input channels"
                if learned
                else "a UNet with doubled output channels needs variance_type 'learned_range' or 'learned'"
            )
            raise ValueError(
                f"The UNet has {in_channels} input and {out_channels} output channels, but the scheduler's "
                f"variance_type={variance_type!r} needs {expected} output channels: {hint}."
            )

    # ------------------------------------------------------------------------------------------------------------
    # Likelihood
    # ------------------------------------------------------------------------------------------------------------

    def log_likelihood(
        self,
        images: Any,
        generator: torch.Generator | list[torch.Generator] | None = None,
        clip_denoised: bool = False,
        return_dict: bool = True,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
    ) -> LikelihoodOutput | tuple:
        """The variational bound on -log p_θ(x_0) in bits/dim (eq. 5), summed exactly over all T timesteps.

        Computed by `variational_bound` of the likelihood module (shipped next to this file): for every image and
        every t one x_t ~ q(x_t | x_0) (eq. 4), the KL term for t > 0 and the discretized decoder NLL for t = 0
        (eq. 13), plus the prior L_T. Many (image, timestep) pairs share one UNet call (`max_batch_size` per call);
        the noise of a pair depends only on the image's noise key (drawn from `generator`) and t, so the result does
        not depend on `max_batch_size`, and the package's `ddpm_plus.bound_estimation.estimate_bound` with the same
        generator estimates exactly this value. The UNet runs in eval mode (its mode is restored) in its float32 or
        float64 weights; float16/bfloat16 UNets are refused (call `pipe.unet.float()` first). The terms are float64
        on the CPU.

        Args:
            images: at least one 8-bit image: a float tensor (B, C, H, W) on the grid k/127.5 - 1 in [-1, 1], a
                uint8 tensor (B, C, H, W), a uint8 array (B, H, W, C) or (B, H, W), or a PIL image or list of PIL
                images of mode "L" or "RGB" (convert other modes first; `ddpm_plus.data.to_8bit_image` does so
                exactly, or refuses).
            generator: a CPU `torch.Generator`, or one per image (an image's bound then does not depend on the
                rest of the batch); None uses torch's global generator.
            clip_denoised: clip the predicted x_0 to [-1, 1] before forming the mean of p_θ(x_{t-1} | x_t).
            return_dict: return a `LikelihoodOutput` instead of a tuple of its fields.
            max_batch_size: (image, timestep) pairs per UNet call.
            class_labels: for a class-conditional UNet, the class of every image (one int) or of each image.
        """
        self._check_components()
        self._check_scheduler_math("log_likelihood")
        _check_not_empty(images)
        x0 = self._as_model_images(images)
        labels = class_label_tensor(class_labels, x0.shape[0], self.unet.config.get("num_class_embeds"))
        bound = variational_bound(
            self.unet,
            x0,
            self.scheduler,
            generator=generator,
            max_batch_size=max_batch_size,
            clip_denoised=clip_denoised,
            progress=not getattr(self, "_progress_bar_config", {}).get("disable", False),
            class_labels=labels,
        )
        self.maybe_free_model_hooks()
        output = LikelihoodOutput(
            bits_per_dim=bound.total_bpd,
            prior_bpd=bound.prior_bpd,
            terms_bpd=bound.terms_bpd,
            decoder_bpd=bound.decoder_bpd,
            x0_mse=bound.x0_mse,
            eps_mse=bound.eps_mse,
        )
        return output if return_dict else output.to_tuple()

    def _check_scheduler_math(self, method: str) -> None:
        """Raise a `ValueError` unless the scheduler carries the DDPM+ math that `method` needs."""
        if not hasattr(self.scheduler, "vb_terms_from_moments"):
            raise ValueError(
                f"{method} needs the DDPM+ scheduler math; {type(self.scheduler).__name__} has none. Use "
                "`pipe.scheduler = DDPMPlusScheduler.from_config(pipe.scheduler.config)`."
            )

    # ------------------------------------------------------------------------------------------------------------
    # The probability-flow ODE: images to noise and back
    # ------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, images: Any, num_inference_steps: int = 50) -> torch.Tensor:
        """Map images to their noise along the probability-flow ODE, in the fixed-step DDIM form (η = 0).

        The inverse of `decode` up to the discretisation error, which shrinks with `num_inference_steps`. Step k
        moves x from the noise level of τ_{k-1} (the data: ᾱ = 1) to τ_k with ε̂ = ε̂(x, τ_k) held fixed
        (Song, Meng & Ermon 2021, eq. 12 with σ = 0): x ← √ᾱ_{τ_k} x̂_0 + √(1 - ᾱ_{τ_k}) ε̂,
        x̂_0 = (x - √(1 - ᾱ_{τ_{k-1}}) ε̂) / √ᾱ_{τ_{k-1}}. No clipping, so the map stays invertible.

        Args:
            images: images (B, C, H, W) as a float tensor in [-1, 1] (any values, not only the 8-bit grid), or
                the 8-bit forms `log_likelihood` takes (uint8 tensors and arrays, PIL images).
            num_inference_steps: steps τ_1 < ... < τ_N of `scheduler.set_timesteps` (1..num_train_timesteps).

        Returns:
            The noise x_{τ_N}, float64 (B, C, H, W) on the execution device.
        """
        x = self._as_model_images(images, on_8bit_grid=False).to(self._execution_device, torch.float64)
        timesteps = self._ode_timesteps(x.shape[0], num_inference_steps).flip(0).tolist()
        for level, t in zip([None, *timesteps[:-1]], timesteps, strict=True):
            x = self._ddim_transfer(x, t, level, t)
        return x

    @torch.no_grad()
    def decode(self, noise: torch.Tensor, num_inference_steps: int = 50) -> torch.Tensor:
        """Map noise to images along the probability-flow ODE: the deterministic DDIM sampler (η = 0), unclipped.

        Step k moves x from τ_k to τ_{k-1} (the last one to the data, ᾱ = 1) with ε̂ = ε̂(x, τ_k), the same update
        as `encode`; `decode(encode(x))` returns x up to the discretisation error.

        Args:
            noise: (B, C, H, W) float tensor, the noise at the top timestep τ_N (e.g. from `encode`, or N(0, I)).
            num_inference_steps: steps of `scheduler.set_timesteps`, as in `encode`.

        Returns:
            Images in [-1, 1] (not clipped), float64 (B, C, H, W) on the execution device.
        """
        if not isinstance(noise, torch.Tensor) or not noise.is_floating_point() or noise.ndim != 4:
            raise ValueError("noise must be a float tensor (B, C, H, W).")
        x = noise.to(self._execution_device, torch.float64)
        timesteps = self._ode_timesteps(x.shape[0], num_inference_steps).tolist()
        for t, level in zip(timesteps, [*timesteps[1:], None], strict=True):
            x = self._ddim_transfer(x, t, t, level)
        return x

    def _ode_timesteps(self, batch_size: int, num_inference_steps: int) -> torch.Tensor:
        """The descending timesteps τ_N > ... > τ_1 of `scheduler.set_timesteps`, after checking the arguments."""
        self._check_components()
        self._check_scheduler_math("encode and decode")
        self._check_sampling_arguments(batch_size, None, num_inference_steps, "pt")
        self.scheduler.set_timesteps(num_inference_steps)
        return self.scheduler.timesteps

    def _ddim_transfer(self, x: torch.Tensor, t: int, source: int | None, target: int | None) -> torch.Tensor:
        """x at the noise level of timestep `source` to that of `target` (None: the data, ᾱ = 1), with the network's
        ε̂(x, t): x' = √ᾱ' x̂_0 + √(1 - ᾱ') ε̂, x̂_0 = (x - √(1 - ᾱ) ε̂) / √ᾱ (DDIM with η = 0)."""
        output = self.unet(x.to(self.unet.dtype), t).sample.to(x.dtype)[:, : x.shape[1]]
        epsilon = self.scheduler.convert_prediction(output, x, t, to="epsilon")
        alpha_bar = self.scheduler.alphas_cumprod_f64.to(x.device)
        source_alpha_bar = alpha_bar[source] if source is not None else torch.ones((), dtype=x.dtype)
        target_alpha_bar = alpha_bar[target] if target is not None else torch.ones((), dtype=x.dtype)
        pred_original_sample = (x - (1 - source_alpha_bar).sqrt() * epsilon) / source_alpha_bar.sqrt()
        return target_alpha_bar.sqrt() * pred_original_sample + (1 - target_alpha_bar).sqrt() * epsilon

    def _as_model_images(self, images: Any, on_8bit_grid: bool = True) -> torch.Tensor:
        """Images as a float tensor (B, C, H, W) in [-1, 1], checked against the UNet's input shape and, unless
        `on_8bit_grid` is False, to be 8-bit data (finite float tensors otherwise)."""
        if isinstance(images, torch.Tensor):
            if images.ndim != 4:
                raise ValueError(f"Image tensors must have shape (B, C, H, W), got {tuple(images.shape)}.")
            if images.dtype == torch.uint8:
                x0 = images.to(torch.float32) / 127.5 - 1
            elif images.dtype in (torch.float32, torch.float64):
                x0 = images
            else:
                raise ValueError(f"Image tensors must be uint8, float32 or float64, got {images.dtype}.")
        else:
            x0 = _uint8_arrays_to_tensor(images)
        expected = (self.unet.config.in_channels, *self._image_size())
        if tuple(x0.shape[1:]) != expected:
            raise ValueError(
                f"The UNet takes images of shape (B, {', '.join(map(str, expected))}), got {tuple(x0.shape)}."
            )
        if on_8bit_grid:
            check_8bit_data(x0, name="images")
        elif not torch.isfinite(x0).all():
            raise ValueError("images contain NaN or infinite values.")
        return x0

    # ------------------------------------------------------------------------------------------------------------
    # Saving, loading, Hub
    # ------------------------------------------------------------------------------------------------------------

    def save_pretrained(
        self,
        save_directory: str | Path,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> None:
        """Save weights (safetensors), configs and the code files that make the directory self-contained.

        Besides diffusers' layout, the directory gets `pipeline_ddpm_plus.py`, `scheduling_ddpm_plus.py` (also in
        `scheduler/`) and `likelihood.py`, copied from the running modules, and `model_index.json` names the pipeline
        and scheduler files, so plain diffusers loads it with
        `DiffusionPipeline.from_pretrained(path, trust_remote_code=True)`.

        Args:
            save_directory: the directory to write (created if missing).
            safe_serialization: must be True: weights are only written as safetensors.
            variant: weights variant, as in diffusers (e.g. "fp16").
            max_shard_size: shard large weights, as in diffusers.
            push_to_hub: afterwards upload the directory with a model card (see `push_to_hub`); `kwargs` then take
                `repo_id` (default: the directory's name) and `push_to_hub`'s arguments.
        """
        if not safe_serialization:
            raise ValueError("DDPMPlusPipeline saves weights as safetensors only; pickle files are not written.")
        super().save_pretrained(save_directory, safe_serialization=True, variant=variant, max_shard_size=max_shard_size)
        self._write_custom_code(Path(save_directory))
        if push_to_hub:
            repo_id = kwargs.pop("repo_id", Path(save_directory).absolute().name)
            _installed_hub_upload()(save_directory, repo_id, **kwargs)

    @classmethod
    def shipped_code_files(cls) -> dict[str, Path]:
        """The code files that a saved directory of this class carries: file name -> the running source file.

        The pipeline file of this class and of each pipeline class it derives from, the scheduler and the
        likelihood engine, read from where the running modules were imported.
        """
        own_files = [klass for klass in cls.__mro__ if "_code_file" in vars(klass)]
        pipelines = {vars(klass)["_code_file"]: Path(inspect.getfile(klass)) for klass in own_files}
        return {**pipelines, SCHEDULER_FILE: source_file("scheduler"), LIKELIHOOD_FILE: source_file("likelihood")}

    def _write_custom_code(self, directory: Path) -> None:
        """Copy the pipeline, scheduler and likelihood code into `directory`; point `model_index.json` at them."""
        for name, source in self.shipped_code_files().items():
            shutil.copyfile(source, directory / name)
        index_path = directory / self.config_name
        model_index = json.loads(index_path.read_text(encoding="utf-8"))
        model_index.pop("_name_or_path", None)  # where it was loaded from: a local path has no meaning elsewhere
        model_index["_class_name"] = [Path(self._code_file).stem, type(self).__name__]
        if type(self.scheduler).__name__ == SCHEDULER_ENTRY[1]:
            shutil.copyfile(source_file("scheduler"), directory / "scheduler" / SCHEDULER_FILE)
            model_index["scheduler"] = SCHEDULER_ENTRY
        index_path.write_text(json.dumps(model_index, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> "DDPMPlusPipeline":
        """Load a saved directory or Hub repository (diffusers' `from_pretrained`), running none of its code.

        A directory written by `save_pretrained` loads as this class, with its scheduler converted to
        `DDPMPlusScheduler` (see `load_config`); plain `DDPMPipeline` directories load as well. A Hub repository id is
        first downloaded with `huggingface_hub.snapshot_download`, fetching only configurations and safetensors
        weights (`HUB_ALLOW_PATTERNS`), never code; `cache_dir`, `revision`, `token`, `local_files_only` and
        `force_download` in `kwargs` apply to that download. The remaining `kwargs` are diffusers' (`torch_dtype`,
        `variant`, components to use instead of the saved ones, ...).

        Raises:
            PipelineLoadError: a path that does not exist, an invalid or uncached (offline) Hub id, a folder of
                another pipeline kind, or a missing or corrupt `model_index.json`, config or weights file, named.
        """
        directory = pretrained_folder(pretrained_model_name_or_path, kwargs)
        expected, _ = cls._get_signature_keys(cls)
        check_pipeline_folder(directory, cls.__name__, [name for name in expected if name not in kwargs])
        try:
            return super().from_pretrained(str(directory), **kwargs)
        except OSError as error:  # what the checks cannot see, e.g. corrupt .bin weights; diffusers names the file
            raise PipelineLoadError(_first_line(error)) from None

    @classmethod
    def load_config(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
        """diffusers' `load_config`, with the code entries of saved directories resolved to this class.

        A directory written by `save_pretrained` names its shipped code files in `model_index.json`, which diffusers
        would import (with `trust_remote_code=True`). Loaded with this class, the pipeline is this class and the
        scheduler is read as a `DDPMScheduler` configuration (the same keys), which `__init__` converts to
        `DDPMPlusScheduler`. No code from the directory runs.
        """
        loaded = super().load_config(pretrained_model_name_or_path, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        class_entry = config.get("_class_name")
        if isinstance(class_entry, list) and class_entry[-1] in SAVED_PIPELINE_CLASSES:
            config["_class_name"] = cls.__name__
        for name, entry in config.items():
            if entry == SCHEDULER_ENTRY:
                config[name] = ["diffusers", "DDPMScheduler"]
        return loaded

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload the pipeline (weights, configs, code files) with a model card to the Hub; needs ddpm_plus.

        Runs `ddpm_plus.hub.push_pipeline_to_hub(self, repo_id, **kwargs)` of the installed package (found through
        its entry point, `HUB_UPLOAD_ENTRY_POINT`); `kwargs` are its arguments: `commit_message`, `private`,
        `token`, `create_pr` and those of the model card (`bits_per_dim`, `training_args`, `dataset_name`,
        `sample_grid`, `license`, ...). The token is only used for the requests; it is never written anywhere.

        Returns:
            The `huggingface_hub.CommitInfo` of the upload.
        """
        return _installed_hub_upload()(self, repo_id, **kwargs)


def class_label_tensor(class_labels: Any, batch_size: int, num_classes: int | None) -> torch.Tensor | None:
    """Class labels as a (B,) long tensor (one int is every image's class), checked against a UNet with
    `num_classes` class embeddings (None: unconditional, which takes no labels)."""
    if num_classes is None:
        if class_labels is not None:
            raise ValueError("class_labels were given, but the UNet is unconditional (no num_class_embeds).")
        return None
    if class_labels is None:
        raise ValueError(
            f"the UNet is class-conditional ({num_classes} classes): pass class_labels, one class for every image or "
            "one per image."
        )
    if isinstance(class_labels, int | np.integer):
        labels = torch.full((batch_size,), int(class_labels), dtype=torch.long)
    else:
        labels = torch.as_tensor(class_labels)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"class_labels must be integers, got {labels.dtype}.")
        labels = labels.to(torch.long).reshape(-1)
        if labels.shape != (batch_size,):
            raise ValueError(f"got {labels.numel()} class labels for {batch_size} images; pass one per image.")
    outside = labels[(labels < 0) | (labels >= num_classes)]
    if outside.numel():
        raise ValueError(f"class label {outside[0].item()} is outside 0..{num_classes - 1} ({num_classes} classes).")
    return labels


def _check_not_empty(images: Any) -> None:
    """Raise a `ValueError` for an empty batch (a tensor, array or list with no image)."""
    if isinstance(images, (torch.Tensor, np.ndarray, list, tuple)) and len(images) == 0:
        raise ValueError("log_likelihood needs at least one image, got an empty batch.")


def _check_pil_mode(image: Any) -> None:
    """Raise a `ValueError` for a PIL image whose pixels are not 8-bit grey ("L") or colour ("RGB"): a palette or
    YCbCr image would be read as wrong levels, 16-bit or float images have no exact 8-bit form."""
    mode = getattr(image, "mode", None)  # a PIL image's mode is a string (a tensor's `mode` is a method)
    if isinstance(mode, str) and mode not in ("L", "RGB"):
        raise ValueError(
            f"PIL images must have mode 'L' or 'RGB' (8-bit grey or colour), got mode {mode!r}; convert it first "
            "(`ddpm_plus.data.to_8bit_image` converts exactly, or refuses 16-bit, float and transparent images)."
        )


def _uint8_arrays_to_tensor(images: np.ndarray | Sequence[Any] | Any) -> torch.Tensor:
    """uint8 arrays (B, H, W, C) / (B, H, W), or PIL image(s), as a float tensor (B, C, H, W) in [-1, 1]."""
    if isinstance(images, np.ndarray):
        pixels = images
    else:
        batch = images if isinstance(images, (list, tuple)) else [images]
        for image in batch:
            _check_pil_mode(image)
        pixels = np.stack([np.asarray(image) for image in batch])
    if pixels.dtype != np.uint8:
        raise ValueError(
            f"Image arrays must be uint8 (8-bit data), got {pixels.dtype}; pass float images as a tensor "
            "(B, C, H, W) on the 8-bit grid in [-1, 1]."
        )
    if pixels.ndim == 3:
        pixels = pixels[..., None]
    if pixels.ndim != 4:
        raise ValueError(f"Image arrays must have shape (B, H, W, C) or (B, H, W), got {pixels.shape}.")
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1


def pretrained_folder(name_or_path: str | os.PathLike, options: dict[str, Any] | None = None) -> Path:
    """The folder of a saved pipeline: a local folder as it is, a Hub id's snapshot of configurations and safetensors
    weights (downloaded with the `options` of `from_pretrained`); a `PipelineLoadError` for anything else."""
    from huggingface_hub.utils import HFValidationError, LocalEntryNotFoundError

    name = str(name_or_path)
    if os.path.isdir(name):
        return Path(name)
    if os.path.exists(name):
        raise PipelineLoadError(f"{name} is a file; give a saved pipeline folder or a Hub id (owner/name).")
    try:
        return Path(_download_without_code(name, options or {}))
    except HFValidationError:
        raise PipelineLoadError(f"{name}: no such folder, and not a Hub id (owner/name).") from None
    except LocalEntryNotFoundError:
        raise PipelineLoadError(
            f"{name}: no such folder, and the Hub id is not in the local Hub cache while the Hub cannot be reached "
            "(offline, HF_HUB_OFFLINE=1): download it once online."
        ) from None
    except OSError as error:  # an unknown repository, no access, a network error (huggingface_hub's OSErrors)
        raise PipelineLoadError(f"{name}: no such folder, and the Hub download failed: {_first_line(error)}") from None


def check_pipeline_folder(directory: Path, pipeline_name: str, components: Sequence[str]) -> None:
    """Raise a `PipelineLoadError` naming the file unless `directory` is a saved pipeline of `pipeline_name`'s
    kind (its `model_index.json` lists a `UNet2DModel` unet and a scheduler, nothing else) that lists `components`
    (those not given in their place) with folders of a readable config and weights (`check_component_folders`)."""
    index_path = directory / "model_index.json"
    index = _read_json_object(index_path)
    listed = sorted(name for name in index if not name.startswith("_"))
    unet = index.get("unet")
    unet_class = unet[-1] if isinstance(unet, list) and unet else None
    if any(name not in COMPONENT_CONFIG_FILES for name in listed) or ("unet" in listed and unet_class != "UNet2DModel"):
        kind = index.get("_class_name")
        kind = kind[-1] if isinstance(kind, list) else kind
        raise PipelineLoadError(
            f"{index_path} describes a {kind} with components {', '.join(listed)}; {pipeline_name} loads a folder "
            "with a UNet2DModel unet and a scheduler."
        )
    missing = [name for name in components if name not in listed]
    if missing:
        raise PipelineLoadError(f"{index_path} lists no {' and no '.join(missing)}; {pipeline_name} needs both.")
    check_component_folders(directory, components)


def check_component_folders(directory: Path, components: Sequence[str] = tuple(COMPONENT_CONFIG_FILES)) -> None:
    """Raise a `PipelineLoadError` naming the file unless each of `components` (`unet`, `scheduler`) has a folder
    in `directory` with a readable config, and the unet readable weights."""
    for name in components:
        _check_component_folder(directory / name, COMPONENT_CONFIG_FILES[name], name in WEIGHTED_COMPONENTS)


def _check_component_folder(folder: Path, config_file: str, weights: bool) -> None:
    """Raise a `PipelineLoadError` naming the file unless `folder` holds a readable JSON `config_file` and, with
    `weights`, weights files (`WEIGHTS_PATTERNS`) whose safetensors headers are complete."""
    _read_json_object(folder / config_file)
    if not weights:
        return
    files = sorted(path for pattern in WEIGHTS_PATTERNS for path in folder.glob(pattern))
    if not files:
        raise PipelineLoadError(f"{folder} has no weights (diffusion_pytorch_model.safetensors or .bin).")
    for path in files:
        if path.suffix == ".safetensors":
            _check_safetensors(path)


def _first_line(error: Exception) -> str:
    """The first line of an error's message, or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, or a `PipelineLoadError` naming it (missing, unreadable, not a JSON object)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineLoadError(f"{path} is missing.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PipelineLoadError(f"{path} cannot be read (truncated or corrupt: {error}).") from None
    if not isinstance(value, dict):
        raise PipelineLoadError(f"{path} holds a JSON {type(value).__name__}, not an object.")
    return value


def _check_safetensors(path: Path) -> None:
    """A `PipelineLoadError` naming `path` unless its safetensors header is complete and fits the file's size."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (OSError, SafetensorError) as error:
        raise PipelineLoadError(f"{path} is not a complete safetensors file (truncated or corrupt: {error}).") from None


def _download_without_code(repo_id: str, options: dict[str, Any]) -> str:
    """The local snapshot of a Hub repository's configurations and safetensors weights (no code files)."""
    from huggingface_hub import snapshot_download

    download_options = ("cache_dir", "revision", "token", "local_files_only", "force_download")
    return snapshot_download(
        repo_id,
        allow_patterns=HUB_ALLOW_PATTERNS,
        **{name: options[name] for name in download_options if options.get(name) is not None},
    )


def _installed_hub_upload() -> Callable[..., Any]:
    """The Hub upload of an installed ddpm_plus package, found through its entry point (this file ships without the
    package, and imports none of it)."""
    for entry_point in entry_points(**HUB_UPLOAD_ENTRY_POINT):
        try:
            return entry_point.load()
        except ImportError:
            break  # installed, but not importable here
    raise ImportError(
        "Pushing to the Hub writes a model card from the ddpm_plus package's template; install ddpm_plus "
        "(`pip install ddpm_plus`) to use it."
    )
