"""Timestep samplers for training: uniform, and importance sampling by the loss' second moment.

Sampling t ~ U{0..T-1} and scaling one term by T is the Monte-Carlo estimate of the sum over t (docs/math.md,
"Estimating the bound"). Importance sampling keeps that estimate unbiased while lowering its variance: t is drawn
with probability p_t ∝ √E[L_t²] and the loss is weighted by 1 / (T p_t) (Nichol & Dhariwal 2021, section 3.3).
Samplers hold their state in `state_dict()` / `load_state_dict()` so training can be resumed exactly.
"""

from typing import Any

import numpy as np
import torch

from ddpm_plus.scheduling_ddpm_plus import check_choice

TIMESTEP_SAMPLERS = ("uniform", "loss-second-moment")


class UniformSampler:
    """t ~ U{0..T-1}, all importance weights 1."""

    def __init__(self, num_timesteps: int):
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be positive, got {num_timesteps}.")
        self.num_timesteps = num_timesteps

    def probabilities(self) -> np.ndarray:
        """The current sampling distribution over 0..T-1 (float64, sums to 1)."""
        return np.full(self.num_timesteps, 1.0 / self.num_timesteps)

    def sample(
        self, batch_size: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw `batch_size` timesteps; returns (timesteps long, importance weights 1 / (T p_t) float32).

        The draw happens on the CPU (with `generator` if given) so it is reproducible on any device.
        """
        probabilities = torch.from_numpy(self.probabilities())
        timesteps = torch.multinomial(probabilities, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (self.num_timesteps * probabilities[timesteps])
        return timesteps.to(device), weights.to(device=device, dtype=torch.float32)

    def update_with_losses(self, timesteps: torch.Tensor, losses: torch.Tensor) -> None:
        """Record per-sample losses (gathered from all processes); the uniform sampler ignores them."""

    def state_dict(self) -> dict[str, Any]:
        return {"num_timesteps": self.num_timesteps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_timesteps"] != self.num_timesteps:
            raise ValueError(
                f"sampler state is for {state['num_timesteps']} timesteps, this sampler has {self.num_timesteps}."
            )


class LossSecondMomentResampler(UniformSampler):
    """Importance sampling with p_t ∝ √E[L_t²] over the last `history_per_term` losses of each t.

    Until every t has a full history (warm-up) the sampler is uniform. A `uniform_prob` share of probability is
    spread uniformly so that no timestep is starved.
    """

    def __init__(self, num_timesteps: int, history_per_term: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps)
        if history_per_term < 1:
            raise ValueError(f"history_per_term must be positive, got {history_per_term}.")
        if not 0.0 <= uniform_prob <= 1.0:
            raise ValueError(f"uniform_prob must lie in [0, 1], got {uniform_prob}.")
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self.loss_history = np.zeros((num_timesteps, history_per_term), dtype=np.float64)
        self.loss_counts = np.zeros(num_timesteps, dtype=np.int64)

    def warmed_up(self) -> bool:
        return bool((self.loss_counts == self.history_per_term).all())

    def probabilities(self) -> np.ndarray:
        if not self.warmed_up():
            return super().probabilities()
        weights = np.sqrt(np.mean(self.loss_history**2, axis=-1))
        weights /= weights.sum()
        weights *= 1 - self.uniform_prob
        weights += self.uniform_prob / self.num_timesteps
        return weights

    def update_with_losses(self, timesteps: torch.Tensor, losses: torch.Tensor) -> None:
        """Append each (t, loss) pair to the history of t, dropping the oldest entry when full."""
        losses = losses.detach().to("cpu", torch.float64).numpy().reshape(-1)
        timesteps = timesteps.detach().to("cpu").numpy().reshape(-1)
        if timesteps.shape != losses.shape:
            raise ValueError(f"got {timesteps.size} timesteps but {losses.size} losses.")
        if not np.isfinite(losses).all():
            raise ValueError("cannot update the timestep sampler with NaN or infinite losses.")
        for t, loss in zip(timesteps, losses, strict=True):
            if self.loss_counts[t] == self.history_per_term:
                self.loss_history[t, :-1] = self.loss_history[t, 1:]
                self.loss_history[t, -1] = loss
            else:
                self.loss_history[t, self.loss_counts[t]] = loss
                self.loss_counts[t] += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "history_per_term": self.history_per_term,
            "uniform_prob": self.uniform_prob,
            "loss_history": self.loss_history.tolist(),
            "loss_counts": self.loss_counts.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state["history_per_term"] != self.history_per_term:
            raise ValueError(
                f"sampler state keeps {state['history_per_term']} losses per timestep, this sampler "
                f"{self.history_per_term}."
            )
        self.uniform_prob = float(state["uniform_prob"])
        self.loss_history = np.asarray(state["loss_history"], dtype=np.float64)
        self.loss_counts = np.asarray(state["loss_counts"], dtype=np.int64)


def create_timestep_sampler(name: str, num_timesteps: int, **kwargs: Any) -> UniformSampler:
    """Build a sampler by name: "uniform" or "loss-second-moment"."""
    if name == "uniform":
        return UniformSampler(num_timesteps)
    if name == "loss-second-moment":
        return LossSecondMomentResampler(num_timesteps, **kwargs)
    check_choice("timestep sampler", name, TIMESTEP_SAMPLERS)
    raise AssertionError("unreachable")
