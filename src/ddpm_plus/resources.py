# Copyright 2026 The ddpm_plus authors. Licensed under the Apache License, Version 2.0.
"""What a request costs before any work starts, against what the machine has: memory for the tensors that must
exist at once, disk for the files that must be written.

Every estimate is a lower bound (what certainly has to fit: a network batch's first activation, an archive's bytes),
so a request is refused only when it cannot fit, never because an estimate ran high.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

FLOAT32_BYTES = 4


def format_bytes(count: float) -> str:
    """`count` bytes for people: 512 B, 3.1 MB, 2.4 TB (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(count) < 1000 or unit == "PB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def available_memory(device: Any = "cpu") -> int | None:
    """Bytes of memory available to a new allocation on `device` (a torch device or its name): the free memory of
    a CUDA device, else the system's available memory (Linux: MemAvailable); None where it cannot be read."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(torch.device(device))[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def free_disk(path: Path) -> int:
    """Bytes free on the file system that `path` (or its nearest existing ancestor) is on."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def check_memory(needed: int, request: str, device: Any = "cpu") -> None:
    """ValueError naming `request` when `needed` bytes cannot fit in the memory available on `device`."""
    available = available_memory(device)
    if available is not None and needed > available:
        raise ValueError(
            f"{request} needs at least {format_bytes(needed)} of memory at once; {device} has "
            f"{format_bytes(available)} available."
        )


def check_disk(needed: int, request: str, location: Path) -> None:
    """ValueError naming `request` when `needed` bytes cannot be written below `location`."""
    free = free_disk(location)
    if needed > free:
        raise ValueError(
            f"{request} needs at least {format_bytes(needed)} of disk; {location} has {format_bytes(free)} free."
        )


def network_batch_bytes(batch_size: int, first_level_channels: int, height: int, width: int, element_bytes: int) -> int:
    """The first UNet level's activation of a batch: one tensor that every forward pass holds."""
    return batch_size * first_level_channels * height * width * element_bytes


def images_bytes(count: int, channels: int, height: int, width: int, element_bytes: int = 1) -> int:
    return count * channels * height * width * element_bytes


def first_level_channels(unet_config: Any) -> int:
    return int(unet_config["block_out_channels"][0])
