"""The documented noise of the likelihood engine, written here from its definition (not imported from the engine).

Each image draws a noise key from its generator, `torch.randint(0, 2**63 - 1, ...)`: B draws of one generator, or
one draw of each of a list of per-image generators. ε of image i at 0-based timestep t is the float64
`standard_normal` of numpy's Philox bit generator keyed by k_i with counter [0, t, 0, 0].
"""

import numpy as np
import torch


def noise_keys(generator: torch.Generator | list[torch.Generator], batch: int) -> list[int]:
    """The images' noise keys drawn from one generator or from one generator per image."""
    if isinstance(generator, list):
        return [torch.randint(0, 2**63 - 1, (1,), generator=item).item() for item in generator]
    return torch.randint(0, 2**63 - 1, (batch,), generator=generator).tolist()


def seeded_noise_keys(seed: int, batch: int) -> list[int]:
    """The noise keys of `torch.Generator().manual_seed(seed)`."""
    return noise_keys(torch.Generator().manual_seed(seed), batch)


def documented_noise(key: int, t: int, shape) -> np.ndarray:
    """ε of an image with noise key `key` at timestep t: Philox keyed by the key, counter [0, t, 0, 0]."""
    return np.random.Generator(np.random.Philox(key=key, counter=[0, t, 0, 0])).standard_normal(shape)
