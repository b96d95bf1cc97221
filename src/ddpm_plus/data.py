"""Image data for training and evaluation, with PIL, numpy and torch only (no torchvision).

One entry point, :func:`load_image_dataset`, reads three kinds of source and returns a
``torch.utils.data.Dataset`` whose items are float32 tensors ``(C, H, W)`` in ``[-1, 1]``, exactly on the
8-bit grid ``k / 127.5 - 1`` (``k = 0 .. 255``), as the discrete likelihood (bits/dim) needs:

* ``None`` or ``"digits"``: the embedded default, the UCI handwritten digits shipped in the package (1,797 grey
  8x8 images, no download; ``assets/DIGITS_LICENSE.md``), upscaled with PIL's bicubic filter. A fixed split that
  never changes between runs, machines or library versions: 1,500 ``"train"`` and 297 ``"test"`` images.
* an existing directory: an image folder, searched recursively (see :data:`IMAGE_EXTENSIONS`).
* anything else: a 🤗 datasets source, either a directory written by ``save_to_disk`` or a name/path for
  ``datasets.load_dataset`` (offline from the local cache with ``HF_DATASETS_OFFLINE=1``).

Pixels are read only where they have an exact 8-bit form (:func:`to_8bit_image`); other images are refused with
an :class:`UnsupportedImageError` naming the file (or row) and the reason, never guessed:

* 8-bit modes are converted exactly: ``"1"`` (0 or 255), ``"L"``, ``"P"`` (palette lookup), ``"RGB"``,
  ``"RGBX"``, ``"YCbCr"`` (PIL's JPEG/ITU-R BT.601 conversion) and ``"CMYK"`` (PIL's formula
  ``R = (255 - C)(255 - K) / 255``, ..., without colour management). Colour becomes grey (1 channel) by PIL's ITU-R
  601-2 luma transform; grey becomes colour (3 channels) by repeating the level.
* Transparency (``"LA"``, ``"PA"``, ``"RGBA"``, a palette with alpha, a ``transparency`` entry): accepted only when
  every pixel is fully opaque, then the alpha channel is dropped; an image with any transparent pixel is refused,
  since what lies under it (a background colour) is a choice only its owner can make.
* 16-bit and 32-bit integer (``"I;16"``, ``"I;16B"``, ``"I"``, ...) and float (``"F"``) images, and 16-bit per
  channel colour files (which PIL would silently cut to their high byte), are refused: they have no 8-bit form
  without a lossy choice (which range, rounding or gamma), so convert them to 8 bits first. The stored bit depth of
  colour images is seen for image folders only; a 🤗 datasets source decodes its images before they arrive here.
* Any other mode (``"LAB"``, ``"HSV"``, premultiplied alpha, ...) is refused.
* An image over PIL's decompression-bomb limit (2 x ``PIL.Image.MAX_IMAGE_PIXELS`` pixels) is valid but refused as
  too large, naming the limit and how to raise it (:func:`too_large_reason`).

Image folders check every file's mode (and the alpha of files that have transparency) when the dataset is built,
before any training or evaluation starts; a corrupt file that PIL cannot read is skipped with a warning that names
it. 🤗 datasets images are checked when they are read.

Fixed splits are drawn by ordering items by the SHA-256 of a key (the index for digits and datasets, the
relative path for image folders), so they depend on nothing but the data.

Random flips and crops draw from torch's global random generator (or an explicit ``torch.Generator`` when the
transform is called directly). A ``DataLoader`` seeds every worker from it, so ``torch.manual_seed`` (or
``accelerate.utils.set_seed``) makes the augmentation reproducible for a given number of workers, and it
differs from epoch to epoch.
"""

from __future__ import annotations

import hashlib
import logging
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ddpm_plus.extras import import_extra

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

DIGITS_SPLIT_SIZES = {"train": 1500, "test": 297}
"""Sizes of the fixed split of the 1,797 embedded digits."""

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"}
)
"""File suffixes (lower case) read as images in an image folder."""

UNREADABLE_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)
"""What PIL raises for a missing, truncated or corrupt image file (an oversized one is valid: see
:func:`too_large_reason`)."""
_SAVED_DATASET_MARKERS = ("dataset_dict.json", "state.json")
_MAX_NAMED_FILES = 5


# --------------------------------------------------------------------------------------------- 8-bit helpers


def from_uint8(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Map uint8 pixels ``k`` to float32 ``k / 127.5 - 1`` in ``[-1, 1]``, keeping the layout."""
    pixels = torch.as_tensor(images)
    if pixels.dtype != torch.uint8:
        raise ValueError(f"from_uint8 expects uint8 pixels, got {pixels.dtype}.")
    return pixels.to(torch.float32) / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Map floats in ``[-1, 1]`` to the nearest uint8 level (clamped to 0..255), keeping the layout.

    ``to_uint8(from_uint8(pixels))`` gives back ``pixels`` exactly, and ``from_uint8(to_uint8(x))`` is ``x`` for
    every ``x`` on the 8-bit grid.
    """
    return ((images.detach().to(torch.float32) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def make_grid(
    images: torch.Tensor | np.ndarray | Sequence[Image.Image], nrow: int = 8, padding: int = 2, pad_value: int = 255
) -> Image.Image:
    """Tile a batch of images into one PIL image (mode ``"L"`` for 1 channel, ``"RGB"`` for 3).

    Args:
        images: a tensor ``(N, C, H, W)``, float in ``[-1, 1]`` or uint8; a uint8 array ``(N, H, W)`` or
            ``(N, H, W, C)``; or a sequence of equally sized PIL images. ``C`` is 1 or 3.
        nrow: images per row (the last row may be shorter).
        padding: pixels between images and around the grid.
        pad_value: grey level (0..255) of the padding.
    """
    if nrow < 1 or padding < 0 or not 0 <= pad_value <= 255:
        raise ValueError(
            f"make_grid needs nrow >= 1, padding >= 0 and 0 <= pad_value <= 255, got {nrow}, {padding}, {pad_value}."
        )
    batch = _as_uint8_nhwc(images)
    count, height, width, channels = batch.shape
    columns = min(nrow, count)
    rows = math.ceil(count / columns)
    grid = np.full(
        (rows * (height + padding) + padding, columns * (width + padding) + padding, channels), pad_value, np.uint8
    )
    for index, image in enumerate(batch):
        row, column = divmod(index, columns)
        top, left = padding + row * (height + padding), padding + column * (width + padding)
        grid[top : top + height, left : left + width] = image
    return Image.fromarray(grid[..., 0] if channels == 1 else grid)


def _as_uint8_nhwc(images: torch.Tensor | np.ndarray | Sequence[Image.Image]) -> np.ndarray:
    """A batch of images as a uint8 array ``(N, H, W, C)`` with ``C`` in (1, 3)."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"Image tensors must be (N, C, H, W), got shape {tuple(images.shape)}.")
        pixels = images if images.dtype == torch.uint8 else to_uint8(images)
        batch = pixels.permute(0, 2, 3, 1).cpu().numpy()
    else:
        batch = np.stack([np.asarray(image) for image in images]) if not isinstance(images, np.ndarray) else images
        if batch.dtype != np.uint8:
            raise ValueError(
                f"Image arrays must be uint8 (pass float images as tensors in [-1, 1]), got {batch.dtype}."
            )
        if batch.ndim == 3:
            batch = batch[..., None]
        if batch.ndim != 4:
            raise ValueError(f"Image arrays must be (N, H, W) or (N, H, W, C), got shape {batch.shape}.")
    if len(batch) == 0 or batch.shape[-1] not in (1, 3):
        raise ValueError(f"make_grid needs at least one image with 1 or 3 channels, got shape {batch.shape}.")
    return batch


# --------------------------------------------------------------------------------------------- transforms


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Resize (bicubic, antialiased when shrinking) so that the shorter side is ``size``, keeping the aspect."""
    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    return image if new_size == image.size else image.resize(new_size, Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class ImageTransform:
    """PIL image -> float32 tensor ``(num_channels, resolution, resolution)`` on the 8-bit grid in ``[-1, 1]``.

    Converts to ``"L"`` (1 channel) or ``"RGB"`` (3 channels) with :func:`to_8bit_image` (which refuses images
    without an exact 8-bit form with an :class:`UnsupportedImageError`), resizes the shorter side to ``resolution``
    (bicubic), crops a square (centred, or at a random place when ``center_crop`` is false) and flips
    horizontally with probability 1/2 when ``random_flip`` is true.
    """

    resolution: int
    num_channels: int
    center_crop: bool = True
    random_flip: bool = False

    def __post_init__(self) -> None:
        _check_image_shape(self.resolution, self.num_channels)

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        """Transform ``image``; random choices come from ``generator`` (torch's global one when None)."""
        image = to_8bit_image(image, self.num_channels)
        image = self._crop(resize_shorter_side(image, self.resolution), generator)
        pixels = torch.from_numpy(np.array(image))
        pixels = pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)
        if self.random_flip and _coin_flip(generator):
            pixels = pixels.flip(-1)
        return from_uint8(pixels.contiguous())

    def _crop(self, image: Image.Image, generator: torch.Generator | None) -> Image.Image:
        """Square crop of side ``resolution``: centred, or at a random offset."""
        width, height = image.size
        if self.center_crop:
            left, top = (width - self.resolution) // 2, (height - self.resolution) // 2
        else:
            left = int(torch.randint(width - self.resolution + 1, (), generator=generator))
            top = int(torch.randint(height - self.resolution + 1, (), generator=generator))
        return image.crop((left, top, left + self.resolution, top + self.resolution))


class UnsupportedImageError(ValueError):
    """An image whose pixels have no exact 8-bit form (see :func:`to_8bit_image`): refused, not guessed."""


EXACT_8BIT_MODES = frozenset({"1", "L", "P", "RGB", "RGBX", "YCbCr", "CMYK", "LA", "PA", "RGBA"})
"""PIL modes with an exact conversion to 8-bit ``"L"``/``"RGB"`` (those with alpha only when fully opaque)."""

_CONVERT_TO_8_BITS = "convert it to 8 bits per channel first, choosing how its values map to 0..255"
# 16-bit per channel rawmodes that PIL decodes into an 8-bit mode by keeping the high byte (e.g. PNG "RGB;16B").
_HIGH_DEPTH_RAWMODE_SUFFIXES = (";16B", ";16L", ";16N")


def to_8bit_image(image: Image.Image, num_channels: int) -> Image.Image:
    """``image`` as ``"L"`` (1 channel) or ``"RGB"`` (3 channels), converted exactly, or an UnsupportedImageError.

    See the module documentation for what each mode becomes. Raises :class:`UnsupportedImageError` for
    16/32-bit and float modes, unknown modes, and images with a transparent pixel.
    """
    problem = unsupported_mode_reason(image)
    if problem is None and _has_transparency_data(image):
        image = image.convert("RGBA")  # applies a palette's alpha or a `transparency` entry
        problem = _transparency_reason(image)
    if problem is not None:
        raise UnsupportedImageError(problem)
    if image.mode == "RGBA":
        image = image.convert("RGB")  # every pixel is opaque: dropping alpha is exact
    return image.convert("L" if num_channels == 1 else "RGB")


def unsupported_mode_reason(image: Image.Image) -> str | None:
    """Why ``image``'s mode (or, before decoding, its stored bit depth) has no exact 8-bit form, or None.

    Reads the header only, so it is cheap on an image that is opened but not yet loaded.
    """
    mode = image.mode
    if mode == "F":
        return f"mode 'F' holds floating-point pixels, which have no exact 8-bit form: {_CONVERT_TO_8_BITS}"
    if mode == "I" or mode.startswith("I;"):
        bits = "32-bit" if mode == "I" else "16-bit"
        return f"mode {mode!r} holds {bits} integer pixels, which have no exact 8-bit form: {_CONVERT_TO_8_BITS}"
    if mode not in EXACT_8BIT_MODES:
        return (
            f"mode {mode!r} is not one that is read ({', '.join(sorted(EXACT_8BIT_MODES))}): "
            "convert it to 'RGB' or 'L' first"
        )
    rawmode = _stored_rawmode(image)
    if rawmode is not None and rawmode.endswith(_HIGH_DEPTH_RAWMODE_SUFFIXES):
        return (
            f"it stores 16 bits per channel ({rawmode}), which PIL would cut to 8 by dropping the low byte: "
            f"{_CONVERT_TO_8_BITS}"
        )
    return None


def _stored_rawmode(image: Image.Image) -> str | None:
    """The pixel layout of an opened, not yet decoded image file (e.g. ``"RGB;16B"``), or None once decoded."""
    for tile in getattr(image, "tile", None) or ():
        args = tile[3]
        rawmode = args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args else None
        if isinstance(rawmode, str):
            return rawmode
    return None


def _has_transparency_data(image: Image.Image) -> bool:
    """Whether ``image`` has alpha: an alpha channel, a palette with alpha or a ``transparency`` entry (PIL's
    ``Image.has_transparency_data``, which needs Pillow 10.1)."""
    if image.mode in ("LA", "PA", "RGBA") or "transparency" in image.info:
        return True
    return image.mode == "P" and image.palette is not None and image.palette.mode.endswith("A")


def _transparency_reason(image: Image.Image) -> str | None:
    """Why an ``"RGBA"`` image cannot be used (it has a pixel that is not fully opaque), or None."""
    lowest_alpha = image.getchannel("A").getextrema()[0]
    if lowest_alpha == 255:
        return None
    return (
        f"it has transparent pixels (alpha down to {lowest_alpha}), and what shows through them depends on a "
        "background: composite it onto the background of your choice, or drop the alpha channel, first"
    )


def too_large_reason(error: Image.DecompressionBombError) -> str:
    """Why PIL refused to open an image (over its decompression-bomb limit), and how to raise the limit."""
    return (
        f"it is too large for PIL ({error}): PIL refuses images over 2 x PIL.Image.MAX_IMAGE_PIXELS = "
        f"{2 * Image.MAX_IMAGE_PIXELS} pixels; if you trust the file, raise PIL.Image.MAX_IMAGE_PIXELS (or set it "
        "to None) before loading, or make the image smaller"
    )


def _coin_flip(generator: torch.Generator | None) -> bool:
    return bool(torch.randint(2, (), generator=generator))


def _check_image_shape(resolution: int, num_channels: int) -> None:
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}.")
    if num_channels not in (1, 3):
        raise ValueError(f"num_channels must be 1 (grey) or 3 (RGB), got {num_channels!r}.")


# --------------------------------------------------------------------------------------------- fixed splits


def _stable_order(keys: Sequence[str]) -> list[int]:
    """Indices of ``keys`` ordered by the SHA-256 of each key: a shuffle that depends on the keys only."""
    return sorted(range(len(keys)), key=lambda index: hashlib.sha256(keys[index].encode()).digest())


def _split_indices(keys: Sequence[str], num_held_out: int, split: str) -> list[int]:
    """Sorted indices of the ``"test"`` part (``num_held_out`` items) or the ``"train"`` part (the rest)."""
    order = _stable_order(keys)
    if split == "test":
        return sorted(order[:num_held_out])
    if split == "train":
        return sorted(order[num_held_out:])
    raise ValueError(f"split must be 'train' or 'test' here, got {split!r}.")


def _held_out_indices(keys: Sequence[str], split: str, held_out_fraction: float, source: str) -> list[int]:
    """Indices of ``split`` for a source without named splits: everything, or a deterministic held-out part."""
    if not 0.0 <= held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in [0, 1), got {held_out_fraction}.")
    if held_out_fraction == 0.0:
        if split != "train":
            raise ValueError(
                f"{source} has no named splits: use split='train' for all of it, or held_out_fraction > 0 "
                f"to hold out a fixed part as split='test' (got split={split!r})."
            )
        return list(range(len(keys)))
    num_held_out = round(len(keys) * held_out_fraction)
    if not 0 < num_held_out < len(keys):
        raise ValueError(
            f"held_out_fraction={held_out_fraction} of {len(keys)} items in {source} leaves an empty split."
        )
    return _split_indices(keys, num_held_out, split)


# --------------------------------------------------------------------------------------------- digits


DIGITS_FILE = Path(__file__).parent / "assets" / "digits.npz"  # its source and license: assets/DIGITS_LICENSE.md


@lru_cache(maxsize=4)
def _digits_uint8(resolution: int) -> np.ndarray:
    """All 1,797 digits as a read-only uint8 array ``(N, resolution, resolution)``, computed once per size."""
    with np.load(DIGITS_FILE) as archive:
        levels = archive["images"]  # integers 0..16 (the order of scikit-learn's `load_digits`)
    images = np.rint(levels.astype(np.float64) * 255 / 16).astype(np.uint8)
    if resolution != images.shape[-1]:
        images = np.stack(
            [
                np.asarray(Image.fromarray(image).resize((resolution, resolution), Image.Resampling.BICUBIC))
                for image in images
            ]
        )
    images.flags.writeable = False
    return images


def digits_split_indices(split: str) -> list[int]:
    """Sorted indices (in the embedded file's order) of the fixed ``"train"`` or ``"test"`` digits."""
    keys = [str(index) for index in range(sum(DIGITS_SPLIT_SIZES.values()))]
    return _split_indices(keys, DIGITS_SPLIT_SIZES["test"], split)


def digits_uint8(split: str = "train", resolution: int = 16) -> np.ndarray:
    """The fixed ``"train"`` (1,500) or ``"test"`` (297) digits as uint8 ``(N, resolution, resolution)``.

    Pixel values are ``round(v * 255 / 16)`` of the digits' 0..16 values, resized with PIL's bicubic filter.
    """
    _check_image_shape(resolution, 1)
    return _digits_uint8(resolution)[digits_split_indices(split)]


class DigitsDataset(Dataset):
    """The embedded digits as tensors ``(num_channels, resolution, resolution)`` in ``[-1, 1]``.

    The grey digits are repeated over 3 channels when ``num_channels`` is 3; ``random_flip`` flips horizontally
    with probability 1/2 (drawn from torch's global random generator).
    """

    def __init__(self, split: str = "train", resolution: int = 16, num_channels: int = 1, random_flip: bool = False):
        _check_image_shape(resolution, num_channels)
        self.images = torch.from_numpy(digits_uint8(split, resolution))
        self.num_channels = num_channels
        self.random_flip = random_flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        pixels = self.images[index].expand(self.num_channels, -1, -1)
        if self.random_flip and _coin_flip(None):
            pixels = pixels.flip(-1)
        return from_uint8(pixels.contiguous())


# --------------------------------------------------------------------------------------------- PIL sources


class _PILImageDataset(Dataset):
    """Base of datasets that decode PIL images: an unreadable image is logged and replaced by the next one; an
    image without an exact 8-bit form raises an :class:`UnsupportedImageError` that names it."""

    def __init__(self, transform: ImageTransform):
        self.transform = transform

    def __len__(self) -> int:
        raise NotImplementedError

    def _load(self, index: int) -> Image.Image:
        """The decoded image ``index``; raises one of ``UNREADABLE_IMAGE_ERRORS`` when it cannot be read."""
        raise NotImplementedError

    def _describe(self, index: int) -> str:
        """Where image ``index`` comes from, for log messages."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> torch.Tensor:
        index = range(len(self))[index]  # IndexError out of range, as iteration expects
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            try:
                image = self._load(candidate)
            except Image.DecompressionBombError as error:
                raise UnsupportedImageError(
                    f"Cannot use image {self._describe(candidate)}: {too_large_reason(error)}."
                ) from None
            except UNREADABLE_IMAGE_ERRORS as error:
                logger.warning(
                    "Cannot read image %s (%s); using the next image instead.", self._describe(candidate), error
                )
                continue
            try:
                return self.transform(image)
            except UnsupportedImageError as error:
                raise UnsupportedImageError(f"Cannot use image {self._describe(candidate)}: {error}.") from None
        raise RuntimeError(f"None of the {len(self)} images of this dataset can be read.")


class ImageFolderDataset(_PILImageDataset):
    """Images from a list of files, checked upfront: files that fail PIL's ``verify()`` are dropped with a warning,
    and files without an exact 8-bit form (see :func:`to_8bit_image`) raise an :class:`UnsupportedImageError`
    naming them, before any image is used.

    A file that passes ``verify()`` but fails to decode later (e.g. a truncated JPEG) is logged when met and
    replaced by the next image, so an epoch never stops on a bad file.
    """

    def __init__(self, files: Sequence[Path], transform: ImageTransform, *, source: str):
        super().__init__(transform)
        readable, unreadable, unsupported = [], [], []
        for path in files:
            try:
                reason = _unsupported_file_reason(path)
            except UNREADABLE_IMAGE_ERRORS:
                unreadable.append(path)
                continue
            if reason is None:
                readable.append(path)
            else:
                unsupported.append(f"{path}: {reason}")
        if unsupported:
            raise UnsupportedImageError(
                f"{len(unsupported)} image file(s) in {source} cannot be used: {_name_some(unsupported, '; ')}."
            )
        _warn_about_unreadable(unreadable, source)
        if not readable:
            raise ValueError(f"No readable image among the {len(files)} image file(s) of {source}.")
        self.files = readable

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, index: int) -> Image.Image:
        with Image.open(self.files[index]) as image:
            image.load()
            return image  # leaving the block closes the file only; the decoded pixels stay

    def _describe(self, index: int) -> str:
        return str(self.files[index])


def find_image_files(directory: str | Path) -> list[Path]:
    """Image files (by suffix, see :data:`IMAGE_EXTENSIONS`) under ``directory``, recursively, sorted."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"Image folder {directory} is not a directory.")
    files = sorted(path for path in directory.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file())
    if not files:
        raise ValueError(f"Image folder {directory} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
    return files


def _unsupported_file_reason(path: Path) -> str | None:
    """Why the image file cannot be used (see :func:`to_8bit_image`), or None when it can. Reads the header, runs
    PIL's ``verify()``, and decodes only files with transparency data (to find transparent pixels); raises one of
    ``UNREADABLE_IMAGE_ERRORS`` for a file PIL cannot read."""
    try:
        with Image.open(path) as image:
            reason = unsupported_mode_reason(image)
            image.verify()
    except Image.DecompressionBombError as error:
        return too_large_reason(error)
    if reason is not None or not _has_transparency_data(image):
        return reason
    with Image.open(path) as image:
        try:
            to_8bit_image(image, num_channels=3)
        except UnsupportedImageError as error:
            return str(error)
    return None


def _name_some(items: Sequence[str], separator: str = ", ") -> str:
    """The first few of ``items``, joined by ``separator``, and how many more there are."""
    more = f" and {len(items) - _MAX_NAMED_FILES} more" if len(items) > _MAX_NAMED_FILES else ""
    return separator.join(items[:_MAX_NAMED_FILES]) + more


def _warn_about_unreadable(files: Sequence[Path], source: str) -> None:
    if files:
        named = _name_some([str(path) for path in files])
        logger.warning("Skipped %d unreadable image file(s) in %s: %s", len(files), source, named)


class HFImageDataset(_PILImageDataset):
    """The images of one column of a 🤗 ``datasets.Dataset``."""

    def __init__(self, dataset: datasets.Dataset, transform: ImageTransform, image_column: str | None = None):
        import datasets  # imported here: 🤗 datasets is slow to import and only needed for this source

        super().__init__(transform)
        self.image_column = _find_image_column(dataset, image_column)
        dataset = dataset.select_columns([self.image_column])
        feature = dataset.features[self.image_column]
        if not (isinstance(feature, datasets.Image) and feature.decode):
            dataset = dataset.cast_column(self.image_column, datasets.Image())
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def _load(self, index: int) -> Image.Image:
        return self.dataset[index][self.image_column]

    def _describe(self, index: int) -> str:
        return f"row {index} of column {self.image_column!r}"


def _find_image_column(dataset: datasets.Dataset, image_column: str | None) -> str:
    """``image_column`` if given, else the first column of feature type Image, else one named image or img."""
    import datasets

    if image_column is not None:
        if image_column not in dataset.column_names:
            raise ValueError(f"image_column {image_column!r} is not a column of the dataset: {dataset.column_names}.")
        return image_column
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Image):
            return name
    for name in ("image", "img"):
        if name in dataset.column_names:
            return name
    raise ValueError(f"No image column among {dataset.column_names}; pass image_column.")


def _is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a directory written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return any((path / marker).is_file() for marker in _SAVED_DATASET_MARKERS)


def _load_hf_dataset(source: str, split: str, held_out_fraction: float, cache_dir: str | None) -> datasets.Dataset:
    """One split of a saved dataset (``load_from_disk``) or of ``datasets.load_dataset(source)``."""
    datasets = import_extra("datasets", "train")

    if not _is_saved_dataset(Path(source)):
        _reject_held_out_fraction(held_out_fraction, f"{source} (use its split names, e.g. 'train[:90%]')")
        try:
            return datasets.load_dataset(source, split=split, cache_dir=cache_dir)
        except OSError as error:  # a missing path, an unknown or (offline) uncached dataset, a network failure
            reason = " ".join(str(error).split()) or type(error).__name__
            raise ValueError(
                f"The data source {source} is no folder, and no 🤗 dataset of that name can be loaded: {reason}"
            ) from None
    loaded = datasets.load_from_disk(source)
    if isinstance(loaded, datasets.DatasetDict):
        _reject_held_out_fraction(held_out_fraction, f"{source} (use its split names)")
        if split not in loaded:
            raise ValueError(f"Dataset {source} has no split {split!r}; it has {sorted(loaded)}.")
        return loaded[split]
    keys = [str(index) for index in range(len(loaded))]
    return loaded.select(_held_out_indices(keys, split, held_out_fraction, f"dataset {source}"))


def _reject_held_out_fraction(held_out_fraction: float, source: str) -> None:
    if held_out_fraction:
        raise ValueError(f"held_out_fraction is for sources without named splits, not for {source}.")


# --------------------------------------------------------------------------------------------- stored shapes


GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
"""PIL modes read as 1 channel; the other modes are colour (3 channels)."""


def stored_image_shape(source: str | Path, split: str = "train") -> tuple[int, int, int] | None:
    """(height, width, channels) of the first image of a source as stored, before any resizing: channels are 1 for
    grey modes (:data:`GREY_MODES`) and 3 otherwise. Reads one image; None for the digits, which are drawn at any
    size. Sources as for :func:`load_image_dataset`."""
    if str(source) == "digits":
        return None
    path = Path(source)
    if path.is_dir() and not _is_saved_dataset(path):
        return _folder_image_shape(path)
    dataset = _load_hf_dataset(str(source), split, 0.0, None)
    if len(dataset) == 0:
        raise ValueError(f"The data set {source!r} (split {split!r}) holds no images.")
    return _shape_of(HFImageDataset(dataset.select([0]), ImageTransform(1, 3))._load(0))


def _folder_image_shape(directory: Path) -> tuple[int, int, int]:
    """The stored shape of an image folder's images (the channels of the first), which must all have one size: a
    `ValueError` naming two files of different sizes. Unreadable files are left to the data set's warning."""
    first: tuple[Path, tuple[int, int, int]] | None = None
    for path in find_image_files(directory):
        try:
            with Image.open(path) as image:
                shape = _shape_of(image)
        except Image.DecompressionBombError as error:
            raise UnsupportedImageError(f"Cannot use image {path}: {too_large_reason(error)}.") from None
        except UNREADABLE_IMAGE_ERRORS:
            continue
        if first is None:
            first = path, shape
        elif shape[:2] != first[1][:2]:
            raise ValueError(
                f"Image folder {directory} holds images of different sizes ({first[0]} is {first[1][0]}x"
                f"{first[1][1]}, {path} is {shape[0]}x{shape[1]}): resize them to one size first."
            )
    if first is None:
        raise ValueError(f"No readable image among the image files of {directory}.")
    return first[1]


def _shape_of(image: Image.Image) -> tuple[int, int, int]:
    width, height = image.size
    return height, width, 1 if image.mode in GREY_MODES else 3


# --------------------------------------------------------------------------------------------- entry point


def load_image_dataset(
    source: str | Path | None = None,
    *,
    resolution: int = 16,
    num_channels: int | None = None,
    split: str = "train",
    center_crop: bool = True,
    random_flip: bool = False,
    cache_dir: str | None = None,
    image_column: str | None = None,
    held_out_fraction: float = 0.0,
) -> Dataset:
    """A dataset of float32 tensors ``(num_channels, resolution, resolution)`` on the 8-bit grid in ``[-1, 1]``.

    Args:
        source: ``None`` or ``"digits"`` for the embedded digits; an existing directory for an image folder
            (unless ``save_to_disk`` wrote it); otherwise a 🤗 datasets name or path. A file is refused.
        resolution: side of the square images.
        num_channels: 1 (grey) or 3 (RGB); default 1 for the digits and 3 otherwise.
        split: digits: ``"train"`` (1,500) or ``"test"`` (297), fixed. 🤗 datasets with named splits: a split
            name, slicing included (``"train[:90%]"``). Image folders and a single saved ``Dataset``: ``"train"``
            is everything, unless ``held_out_fraction`` holds out a fixed part as ``"test"``.
        center_crop: crop the centre square after resizing the shorter side; otherwise crop at random.
        random_flip: flip horizontally with probability 1/2.
        cache_dir: 🤗 datasets cache directory (``load_dataset`` sources only).
        image_column: image column of a 🤗 dataset; by default the first Image column, else "image" or "img".
        held_out_fraction: for sources without named splits, the fraction held out as ``"test"``.

    Raises:
        UnsupportedImageError: an image without an exact 8-bit form (16-bit, float, transparent, unknown mode; see
            :func:`to_8bit_image`), named: image folders when the dataset is built, 🤗 datasets when read.
    """
    if source is None or str(source) == "digits":
        _reject_held_out_fraction(held_out_fraction, "the digits (their split is fixed)")
        return DigitsDataset(split, resolution, 1 if num_channels is None else num_channels, random_flip)
    transform = ImageTransform(resolution, 3 if num_channels is None else num_channels, center_crop, random_flip)
    path = Path(source)
    if path.is_file():
        raise ValueError(
            f"The data source {path} is a file; expected an image folder, a directory written by "
            "`save_to_disk`, a 🤗 datasets name, or 'digits'."
        )
    if path.is_dir() and not _is_saved_dataset(path):
        files = find_image_files(path)
        keys = [file.relative_to(path).as_posix() for file in files]
        selected = _held_out_indices(keys, split, held_out_fraction, f"image folder {path}")
        return ImageFolderDataset([files[index] for index in selected], transform, source=f"image folder {path}")
    dataset = _load_hf_dataset(str(source), split, held_out_fraction, cache_dir)
    return HFImageDataset(dataset, transform, image_column)
