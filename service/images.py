"""A request's images (an array of pixels, or PNG/JPEG files) → the float32 pixel batch a model
takes, with a clear error for anything else."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from convserve import imagefiles
from convserve.artifact import Preprocessing
from service.errors import InvalidInput, TooLarge

__all__ = ["MAX_IMAGE_PIXELS", "as_pixels", "decode_files"]

# The largest PNG/JPEG decoded (and resized) for a request: a 6000x4000 camera photo fits; a
# few-kilobyte file claiming 100,000x100,000 pixels is refused from its header.
MAX_IMAGE_PIXELS = 25_000_000


def as_pixels(array: np.ndarray, shape: tuple[int, int, int], max_images: int) -> np.ndarray:
    """uint8/float32 [N,H,W], [N,H,W,C] or [N,H*W*C] → float32 [N,H,W,C], checked.

    Cheap (numpy only): safe on the event loop.
    """
    height, width, channels = shape
    accepted = [(height, width, channels), (height * width * channels,)]
    if channels == 1:
        accepted.insert(0, (height, width))
    if array.ndim < 2 or array.shape[1:] not in accepted:
        forms = [f"[N, {', '.join(map(str, form))}]" for form in accepted]
        raise InvalidInput(
            f"images tensor has shape {list(array.shape)}; expected "
            f"{', '.join(forms[:-1])} or {forms[-1]}"
        )
    _check_count(array.shape[0], max_images)
    pixels = array.reshape(array.shape[0], *shape).astype(np.float32, copy=False)
    if pixels.dtype == array.dtype and not np.isfinite(pixels).all():
        bad = int(np.flatnonzero(~np.isfinite(pixels).reshape(len(pixels), -1).all(axis=1))[0])
        raise InvalidInput(f"image {bad} has NaN or infinite pixels; expected finite values 0..255")
    return pixels


def decode_files(files: Sequence[bytes], shape: tuple[int, int, int], max_images: int,
                 preprocessing: Preprocessing) -> np.ndarray:  # fmt: skip
    """PNG/JPEG files of any size or colour → float32 [N, H, W, C]: converted and resized as
    the model's preprocessing records (convserve.imagefiles, the code training used). Call it
    from a worker thread."""
    _check_count(len(files), max_images)
    decoded = np.empty((len(files), *shape), np.float32)
    for index, data in enumerate(files):
        try:
            decoded[index] = imagefiles.decode(data, shape, preprocessing, MAX_IMAGE_PIXELS)
        except imagefiles.ImageTooLarge as exc:
            raise TooLarge(f"image {index}: {exc}") from None
        except imagefiles.ImageFileError as exc:
            raise InvalidInput(f"image {index}: {exc}") from None
    return decoded


def _check_count(count: int, max_images: int) -> None:
    if count == 0:
        raise InvalidInput("the request has no images; expected at least 1")
    if count > max_images:
        raise TooLarge(
            f"the request has {count} images; this server takes at most {max_images} (max_images)"
        )
