"""The random weights of the fixture checkpoints, made from their key list and a seed.

The upstream code computed the fixtures' reference outputs with exactly these weights (generate.py), so the tests
rebuild each `.pt` checkpoint from `manifest.json` instead of committing megabytes of random numbers.
"""

from pathlib import Path

import torch

HERE = Path(__file__).parent


def random_state_dict(shapes: dict[str, list], seed: int) -> dict[str, torch.Tensor]:
    """A state dict with the given `{key: [shape, dtype]}`, in that order: every tensor drawn from one
    `torch.Generator` seeded with `seed`, N(0, 1/fan_in) for matrices and kernels and N(0, 0.5²) for vectors, none
    of them zero, then rounded to the stored dtype (float16 for the parts of a `use_fp16` model)."""
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for key, (shape, dtype) in shapes.items():
        values = torch.randn(shape, generator=generator, dtype=torch.float64)
        scale = 0.5 if len(shape) == 1 else values[0].numel() ** -0.5
        values = values * scale
        values = torch.where(values == 0, torch.full_like(values, 1e-3), values)
        state_dict[key] = values.to(getattr(torch, dtype))
    return state_dict


def write_checkpoint(entry: dict, path: Path) -> Path:
    """Save the checkpoint of a manifest entry as `torch.save` of its state dict, as the released files are."""
    torch.save(random_state_dict(entry["state_dict"], entry["seed"]), path)
    return path
