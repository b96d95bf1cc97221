"""The objective: timesteps from a timestep sampler, noise from our own generators, x_t = q(x_t | x_0) (eq. 4) and the
loss from `DDPMPlusScheduler.training_losses` (eq. 14, or the variational bound of eq. 5), weighted by the sampler's
importance weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ddpm_plus.timestep_samplers import UniformSampler
from ddpm_plus.utils import derived_seed

if TYPE_CHECKING:
    from ddpm_plus.scheduling_ddpm_plus import DDPMPlusScheduler


@dataclass
class TrainingGenerators:
    """Our own random streams: timesteps (CPU, as the samplers draw there) and noise (on the training device)."""

    timesteps: torch.Generator
    noise: torch.Generator

    @classmethod
    def create(cls, seed: int, process_index: int, device: torch.device) -> TrainingGenerators:
        """Independent streams per process, reproducible from the run seed."""
        timesteps = torch.Generator().manual_seed(derived_seed(seed, process_index, 0))
        noise = torch.Generator(device=device).manual_seed(derived_seed(seed, process_index, 1))
        return cls(timesteps=timesteps, noise=noise)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"timesteps": self.timesteps.get_state(), "noise": self.noise.get_state().cpu()}

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        self.timesteps.set_state(state["timesteps"])
        self.noise.set_state(state["noise"])


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # scalar: the importance-weighted mean of the per-sample losses
    per_sample_loss: torch.Tensor  # (B,) unweighted, detached (what the timestep sampler learns from)
    timesteps: torch.Tensor  # (B,) on the CPU


@dataclass
class DiffusionObjective:
    """The per-batch DDPM loss through the scheduler's public API (no second copy of the math).

    t ~ the timestep sampler, ε ~ N(0, I), x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε (eq. 4); the loss is `training_losses`
    ("simple" is eq. 14; "vlb", "hybrid" and "kl" use the bound terms of eq. 5), each sample weighted by the
    sampler's importance weight 1 / (T p_t), which keeps the estimate of the sum over t unbiased.
    """

    scheduler: DDPMPlusScheduler
    timestep_sampler: UniformSampler
    loss_type: str = "simple"
    snr_gamma: float | None = None
    vlb_weight: float = 0.001
    channels_last: bool = False

    def __call__(self, model: torch.nn.Module, x0: torch.Tensor, generators: TrainingGenerators) -> ObjectiveOutput:
        timesteps, weights = self.timestep_sampler.sample(x0.shape[0], "cpu", generators.timesteps)
        noise = torch.randn(x0.shape, generator=generators.noise, device=x0.device, dtype=x0.dtype)
        # The scheduler's tables live on the CPU: CPU timesteps index them without a device round trip.
        x_t = self.scheduler.q_sample(x0, noise, timesteps)
        model_input = x_t.contiguous(memory_format=torch.channels_last) if self.channels_last else x_t
        model_output = model(model_input, timesteps.to(x0.device, non_blocking=True)).sample
        terms = self.scheduler.training_losses(
            model_output.float(),
            x0,
            noise,
            timesteps,
            loss_type=self.loss_type,
            x_t=x_t,
            snr_gamma=self.snr_gamma,
            vlb_weight=self.vlb_weight,
        )
        per_sample = terms["loss"]
        loss = (per_sample * weights.to(x0.device, non_blocking=True)).mean()
        return ObjectiveOutput(loss=loss, per_sample_loss=per_sample.detach(), timesteps=timesteps)
