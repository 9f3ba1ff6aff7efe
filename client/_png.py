"""A minimal PNG writer (8-bit grayscale) so that pictures need neither Pillow nor TensorFlow."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["feature_grid", "write_png"]


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write a 2-D uint8 array as a grayscale PNG."""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got {image.dtype} {list(image.shape)}")
    height, width = image.shape
    rows = np.hstack([np.zeros((height, 1), np.uint8), image])  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    Path(path).write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
        + chunk(b"IEND", b"")
    )


def feature_grid(activations: np.ndarray, *, scale: int = 4, border: int = 2) -> np.ndarray:
    """One image's activations [H, W, C] → a uint8 grid of its C channels, each scaled up.

    All channels share one brightness scale (0 black → the layer's largest value white), so
    channels can be compared with each other.
    """
    height, width, channels = activations.shape
    columns = int(np.ceil(np.sqrt(channels)))
    rows = int(np.ceil(channels / columns))
    low, high = float(activations.min()), float(activations.max())
    scaled = (activations - low) / (high - low) * 255 if high > low else np.zeros_like(activations)
    cell_h, cell_w = height * scale + border, width * scale + border
    grid = np.full((rows * cell_h + border, columns * cell_w + border), 128, np.uint8)
    for channel in range(channels):
        row, column = divmod(channel, columns)
        tile = np.kron(scaled[:, :, channel], np.ones((scale, scale))).astype(np.uint8)
        top, left = border + row * cell_h, border + column * cell_w
        grid[top : top + height * scale, left : left + width * scale] = tile
    return grid
