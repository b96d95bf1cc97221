"""Exact references for Gaussian data x_0 ~ N(mean, var) per dimension, written from eq. 4 and eq. 7."""

import math

import torch

from ddpm_plus import DDPMPlusScheduler


def optimal_epsilon(alpha_prod_t: float | torch.Tensor, x: torch.Tensor, mean: float, var: float) -> torch.Tensor:
    """Bayes-optimal ε*(x_t) = √(1-ᾱ)(x_t - √ᾱ mean) / (ᾱ var + 1 - ᾱ); ᾱ a number, or a tensor that broadcasts
    against x (one value per sample)."""
    ab = alpha_prod_t
    return (1 - ab) ** 0.5 * (x - ab**0.5 * mean) / (ab * var + 1 - ab)


def exact_sampler_moments(scheduler: DDPMPlusScheduler, eta: float, mean: float, var: float) -> tuple[float, float]:
    """Mean and variance of the output of `scheduler.step(..., stochasticity=eta)` driven by the optimal ε*,
    starting from N(0, 1), propagated exactly.

    With ε* every step is linear-Gaussian, x_{t-1} = A x_t + B + η σ_t z, so (μ, v) ← (A μ + B, A² v + η² σ_t²).
    The result differs from (mean, var) only by the sampler's discretization error.
    """
    ab_table = scheduler.alphas_cumprod.double()
    timesteps = scheduler.timesteps.tolist()
    out_mean, out_var = 0.0, 1.0
    for i, t in enumerate(timesteps):
        ab = ab_table[t].item()
        ab_prev = ab_table[timesteps[i + 1]].item() if i + 1 < len(timesteps) else 1.0
        k = math.sqrt(1 - ab) / (ab * var + 1 - ab)  # ε* = k (x - √ᾱ mean)
        x0_gain, x0_bias = (1 - math.sqrt(1 - ab) * k) / math.sqrt(ab), math.sqrt(1 - ab) * k * mean
        beta = 1 - ab / ab_prev
        std = eta * math.sqrt(max((1 - ab_prev) / (1 - ab) * beta, 1e-20))
        direction = math.sqrt(max(1 - ab_prev - std**2, 0.0))
        gain = math.sqrt(ab_prev) * x0_gain + direction * k
        bias = math.sqrt(ab_prev) * x0_bias - direction * k * math.sqrt(ab) * mean
        out_mean, out_var = gain * out_mean + bias, gain**2 * out_var + (std**2 if t > 0 else 0.0)
    return out_mean, out_var
