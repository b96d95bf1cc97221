"""Images to evaluate, read as uint8 batches, and what a source holds, found before any work.

A source is an `.npz` archive of uint8 images (N, H, W, C) under the key `arr_0` (what `ddpm-plus sample` writes,
and what improved-diffusion, guided-diffusion, clean-fid and torch-fidelity read), an image folder, the embedded
`digits` or a 🤗 datasets name or path with a split; folders, digits and datasets are read through
`ddpm_plus.data.load_image_dataset`, at their stored size (the digits at the size asked for).
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpm_plus.data import load_image_dataset, stored_image_shape, to_uint8

Shape = tuple[int, int, int]  # (height, width, channels)
IMAGES_KEY = "arr_0"


def describe_shape(shape: Shape) -> str:
    height, width, channels = shape
    return f"{height}x{width} with {channels} channel{'s' if channels > 1 else ''}"


def archive_members(path: Path) -> set[str]:
    """The array names of an `.npz` archive, or a `ValueError` when it is not one."""
    try:
        with zipfile.ZipFile(path) as archive:
            return {name.removesuffix(".npy") for name in archive.namelist()}
    except (OSError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} is not a readable .npz archive ({error}).") from None


def archive_header(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype of the array `key` of an `.npz` archive, read from its header only; a `ValueError` naming
    the file when it has no such array or its header cannot be read."""
    members = archive_members(path)
    if key not in members:
        raise ValueError(
            f"{path} has no array {key} (it holds {', '.join(sorted(members)) or 'none'}): give uint8 images (N, H, W, "
            f"C) under {IMAGES_KEY}, or feature statistics with both mu and sigma."
        )
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as member:
            version = np.lib.format.read_magic(member)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(member)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: the header of {key} cannot be read ({error}).") from None
    return shape, dtype


@dataclass
class ArchiveImages:
    """The images of an `.npz` archive: uint8 (N, H, W, C) under `arr_0`, C = 1 or 3 (checked from the header)."""

    path: Path
    count: int = field(init=False)
    shape: Shape = field(init=False)
    _pixels: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        array_shape, dtype = archive_header(self.path, IMAGES_KEY)
        if dtype != np.uint8 or len(array_shape) != 4 or array_shape[-1] not in (1, 3):
            raise ValueError(
                f"{self.path}: {IMAGES_KEY} must be uint8 images (N, H, W, C) with C = 1 or 3, got {dtype} of shape "
                f"{array_shape}."
            )
        self.count, self.shape = array_shape[0], tuple(array_shape[1:])

    def bind(self, shape: Shape) -> None:
        """Nothing to do: an archive is read at its stored shape (the same as `shape`, checked by the caller)."""

    def read(self, indices: range) -> torch.Tensor:
        """Images `indices` as uint8 (B, C, H, W); the archive is loaded once, on first use."""
        if self._pixels is None:
            with np.load(self.path) as archive:
                self._pixels = archive[IMAGES_KEY]
        return torch.from_numpy(self._pixels[indices.start : indices.stop]).permute(0, 3, 1, 2).contiguous()

    def fingerprint(self) -> str:
        stat = self.path.stat()
        return f"archive:{self.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


@dataclass
class DatasetImages:
    """The images of an image folder, the digits or a 🤗 dataset split, at their stored size (`shape`; None for the
    digits until `bind` gives them one)."""

    location: str
    split: str
    shape: Shape | None = field(init=False)
    _dataset: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.shape = stored_image_shape(self.location, self.split)

    def bind(self, shape: Shape) -> None:
        """Open the data set at `shape` (square images only: folders and datasets are read square)."""
        height, width, channels = shape
        if height != width:
            raise ValueError(
                f"{self.location} is read as square images, but the other side's images are {height}x{width}."
            )
        self.shape = shape
        self._dataset = load_image_dataset(self.location, resolution=height, num_channels=channels, split=self.split)

    @property
    def count(self) -> int:
        return len(self._dataset)

    def read(self, indices: range) -> torch.Tensor:
        return read_uint8(self._dataset, indices)

    def fingerprint(self) -> str:
        files = getattr(self._dataset, "files", None)
        if files is not None:  # an image folder: each file's name, size and modification time
            listing = "\n".join(f"{path}:{path.stat().st_size}:{path.stat().st_mtime_ns}" for path in files)
            return f"folder:{hashlib.sha256(listing.encode()).hexdigest()}"
        inner = getattr(self._dataset, "dataset", None)  # a 🤗 dataset: its fingerprint
        return f"dataset:{self.location}:{self.split}:{getattr(inner, '_fingerprint', '')}"


def read_uint8(dataset: torch.utils.data.Dataset, indices: range) -> torch.Tensor:
    """Images `indices` of a `ddpm_plus.data` data set (floats in [-1, 1] on the 8-bit grid) as uint8 (B, C, H, W)."""
    return to_uint8(torch.stack([dataset[index] for index in indices]))


ImageSet = ArchiveImages | DatasetImages


def open_images(location: str, split: str) -> ImageSet:
    """The images at `location`: an `.npz` archive (a `ValueError` unless it holds uint8 NHWC images), or a folder,
    the digits or a 🤗 dataset split."""
    path = Path(location)
    if path.suffix == ".npz" and path.is_file():
        return ArchiveImages(path)
    return DatasetImages(location, split)
