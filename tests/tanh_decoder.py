"""improved-diffusion's decoder, written out as a test reference (the package computes the exact one)."""

import math

import torch


def tanh_decoder_nll(x0: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Element-wise negated discretized Gaussian log-likelihood of improved-diffusion, in the inputs' dtype:
    Φ(x) ≈ ½(1 + tanh(√(2/π)(x + 0.044715 x³))), every log-probability floored at log 1e-12."""

    def approx_cdf(x):
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))

    inv_std = torch.exp(-log_scale)
    cdf_plus = approx_cdf(inv_std * (x0 - mean + 1 / 255))
    cdf_min = approx_cdf(inv_std * (x0 - mean - 1 / 255))
    log_probs = torch.where(
        x0 < -0.999,
        cdf_plus.clamp(min=1e-12).log(),
        torch.where(x0 > 0.999, (1 - cdf_min).clamp(min=1e-12).log(), (cdf_plus - cdf_min).clamp(min=1e-12).log()),
    )
    return -log_probs
