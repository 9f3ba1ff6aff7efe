"""PNG/JPEG files → a model's pixels, as its recorded preprocessing says: one function for
training (reading an image folder) and serving (encoded requests), so that both convert and
resize alike, pixel for pixel (client-side resizing that differs from training's is a known
cause of silent accuracy loss).

Pillow only (the server has no TensorFlow, so Keras's loader, which resizes with
TensorFlow's kernels, could not be matched when serving).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from convserve.artifact import Preprocessing

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["ImageFileError", "ImageInfo", "ImageTooLarge", "decode", "inspect"]

_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")
# Pillow modes without colour: their images are grayscale.
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})


class ImageFileError(ValueError):
    """Not a PNG or JPEG, truncated (a PNG chunk's CRC), or not decodable."""


class ImageTooLarge(ImageFileError):
    """More pixels than the caller decodes (a small file can hold a huge image)."""


@dataclass(frozen=True)
class ImageInfo:
    """What an image file is, read from its header: width x height and colour."""

    width: int
    height: int
    color: str  # "grayscale" or "rgb"


def _open(data: bytes, max_pixels: int = 0, *, decoded: bool = True) -> Image:
    """The image, decoded (or with its header read only); its size is checked against
    `max_pixels` (0: Pillow's own limit) from the header, before anything is decompressed."""
    from PIL import Image

    if not data.startswith(_SIGNATURES):
        raise ImageFileError(f"not a PNG or JPEG file (starts with {data[:8]!r})")
    try:
        with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as image:
            pixels = image.width * image.height
            if max_pixels and pixels > max_pixels:
                raise ImageTooLarge(
                    f"{image.width}x{image.height} is {pixels:,} pixels; at most {max_pixels:,} "
                    "are decoded per image"
                )
            if not decoded:
                return image
            image.verify()  # PNG: every chunk's CRC, up to IEND (decoding stops earlier)
        image = Image.open(io.BytesIO(data), formats=("PNG", "JPEG"))
        image.load()
    except Image.DecompressionBombError as exc:  # over twice Pillow's MAX_IMAGE_PIXELS
        raise ImageTooLarge(str(exc)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageTooLarge):
            raise
        raise ImageFileError(f"cannot decode it: {exc}") from None
    return image


def inspect(data: bytes) -> ImageInfo:
    """The file's size and colour, from its header: a truncated file passes, `decode` raises."""
    image = _open(data, decoded=False)
    color = "grayscale" if image.mode in _GRAY_MODES else "rgb"
    return ImageInfo(image.width, image.height, color)


def decode(
    data: bytes, shape: tuple[int, int, int], preprocessing: Preprocessing, max_pixels: int = 0
) -> np.ndarray:
    """The file as uint8 pixels [H, W, C] of the input `shape`: converted to the recorded
    colour (grayscale: ITU-R 601-2 luma), then resized with the recorded interpolation if its
    size differs. ImageTooLarge for an image of more than `max_pixels` (if given)."""
    from PIL import Image

    height, width, channels = shape
    if not preprocessing.color:
        raise ImageFileError(
            f"the model takes {channels} channels, not an image: send a tensor [N, {height}, "
            f"{width}, {channels}]"
        )
    image = _open(data, max_pixels)
    converted = image.convert("L" if preprocessing.color == "grayscale" else "RGB")
    if converted.size != (width, height):
        resample = Image.Resampling[preprocessing.interpolation.upper()]
        converted = converted.resize((width, height), resample)
    return np.asarray(converted, np.uint8).reshape(height, width, channels)
