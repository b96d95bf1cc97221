"""One optimizer step: gradient accumulation, clipping, learning-rate schedule, EMA of the weights; a step whose loss
or gradient is not finite on any process changes nothing. And the optimizer: AdamW, its settings on resume."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ddpm_plus.timestep_samplers import LossSecondMomentResampler
from ddpm_plus.training.objective import DiffusionObjective, ObjectiveOutput, TrainingGenerators

if TYPE_CHECKING:
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel


@dataclass
class StepOutput:
    loss: torch.Tensor  # detached mean loss of the step's micro-batches on this process (not synchronised)
    grad_norm: torch.Tensor | None  # total gradient norm before clipping (unscaled under fp16)
    nonfinite: str | None = None  # "loss" or "gradient" when that was not finite on some process: nothing changed


@dataclass
class TrainingStep:
    """One optimizer step: accumulate gradients over micro-batches, clip, step, schedule the LR, update the EMA.

    The learning-rate scheduler is stepped here once per optimizer step (it is not prepared by accelerate, which
    would step it once per process), and not when a mixed-precision overflow made the optimizer skip its step.
    A step whose loss or gradient is not finite on any process (all processes take the same decision) changes
    nothing: no optimizer update, no learning-rate or EMA step, no timestep-sampler update. Under fp16 loss scaling a
    non-finite gradient with a finite loss is an overflow, which the loss scaler skips and handles as usual.
    """

    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    objective: DiffusionObjective
    generators: TrainingGenerators
    ema: EMAModel | None = None
    max_grad_norm: float = 1.0
    parameters: list[torch.nn.Parameter] = field(init=False)

    def __post_init__(self) -> None:
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]

    def __call__(self, micro_batches: Sequence[torch.Tensor]) -> StepOutput:
        accelerator = self.accelerator
        loss_sum = torch.zeros((), device=accelerator.device)
        outputs: list[ObjectiveOutput] = []
        for x0 in micro_batches:
            with accelerator.accumulate(self.model):
                output = self.objective(self.model, x0.to(accelerator.device, non_blocking=True), self.generators)
                accelerator.backward(output.loss)
                loss_sum += output.loss.detach()
                outputs.append(output)
                if accelerator.sync_gradients:
                    grad_norm, nonfinite = self._update_if_finite(loss_sum)
        if not accelerator.sync_gradients:
            raise RuntimeError("gradient accumulation is out of step with the micro-batches of an optimizer step.")
        step_output = StepOutput(loss=loss_sum / len(micro_batches), grad_norm=grad_norm, nonfinite=nonfinite)
        if nonfinite is not None:
            return step_output
        for output in outputs:
            self._update_timestep_sampler(output)
        if not accelerator.optimizer_step_was_skipped:
            self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.step(self.parameters)
        return step_output

    def _update_if_finite(self, loss_sum: torch.Tensor) -> tuple[torch.Tensor, str | None]:
        """Clip (or, with clipping off, only measure) the gradients, then step unless something is not finite."""
        grad_norm = self.accelerator.clip_grad_norm_(self.parameters, self.max_grad_norm or math.inf)
        nonfinite = self._nonfinite_part(loss_sum, grad_norm)
        if nonfinite is None:
            self.optimizer.step()
        elif self.accelerator.scaler is not None:
            self.accelerator.scaler.update()  # close the loss scaler's step: clipping unscaled the gradients
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, nonfinite

    def _nonfinite_part(self, loss_sum: torch.Tensor, grad_norm: torch.Tensor) -> str | None:
        """Which part ("loss", "gradient") is not finite on some process, or None; the same on every process."""
        flags = torch.stack([~torch.isfinite(loss_sum), ~torch.isfinite(grad_norm.to(loss_sum.device))])
        bad_loss, bad_gradient = self.accelerator.reduce(flags.float(), "sum").tolist()
        if bad_loss:
            return "loss"
        if bad_gradient and self.accelerator.scaler is None:
            return "gradient"
        return None

    def _update_timestep_sampler(self, output: ObjectiveOutput) -> None:
        """Feed the losses of all processes to a loss-aware sampler, so every process keeps the same state."""
        if not isinstance(self.objective.timestep_sampler, LossSecondMomentResampler):
            return  # the uniform sampler learns nothing: skip the collective
        device = self.accelerator.device
        timesteps, losses = self.accelerator.gather((output.timesteps.to(device), output.per_sample_loss))
        self.objective.timestep_sampler.update_with_losses(timesteps, losses)


def build_optimizer(
    parameters: Sequence[torch.nn.Parameter],
    *,
    learning_rate: float,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    eps: float = 1e-8,
    device: torch.device | str = "cpu",
) -> torch.optim.AdamW:
    """AdamW with the fastest implementation of the same update: fused kernels on CUDA, foreach on CPU."""
    implementation = {"fused": True} if torch.device(device).type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(
        parameters, lr=learning_rate, betas=betas, weight_decay=weight_decay, eps=eps, **implementation
    )


def set_optimizer_hyperparameters(
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    learning_rate: float,
    betas: tuple[float, float],
    weight_decay: float,
    eps: float,
) -> None:
    """Apply the given hyper-parameters to an optimizer and its schedule restored from a checkpoint.

    A restored optimizer keeps the values it was saved with; this makes `learning_rate` the base of the schedule
    from the current step on (the current rate is rescaled by the ratio of the bases) and sets the AdamW settings.
    """
    for group, base in zip(optimizer.param_groups, lr_scheduler.base_lrs, strict=True):
        group["lr"] *= learning_rate / base
        group.update(initial_lr=learning_rate, betas=betas, weight_decay=weight_decay, eps=eps)
    lr_scheduler.base_lrs = [learning_rate] * len(optimizer.param_groups)
    lr_scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every value of every tensor is finite."""
    flags = [torch.isfinite(tensor).all() for tensor in tensors]
    return bool(torch.stack(flags).all()) if flags else True
