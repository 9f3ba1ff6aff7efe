"""PNG pictures of what a model computes: feature maps, Grad-CAM overlays, conv filters.

Drawn with matplotlib (the `plots` extra), never TensorFlow: the client's commands and the
training report both draw with it. Every function takes the arrays the client returns and
writes one PNG; its caption names the layer and, for conv layers, the kernel, padding,
strides and dilation that gave the output its size.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convserve.artifact import Layer

__all__ = ["MAX_TILES", "explain_png", "feature_map_png", "filters_png", "layer_caption", "pyplot"]

# At most this many tiles per picture: beyond it they get too small to see.
MAX_TILES = 64


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend; a clear error without the extra."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("pictures need matplotlib: pip install 'convserve[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def layer_caption(layer: Layer) -> str:
    """The layer in a few lines; for Conv2D its kernel, strides, dilation and padding and the
    course's output-size formula with them, e.g. `O = ⌊(28 − 3 + 0) / 1⌋ + 1 = 26`."""

    def shape(dims: tuple[int, ...]) -> str:
        return "x".join(map(str, dims))

    caption = f"{layer.name} {layer.type}: {shape(layer.input_shape)} → {shape(layer.output_shape)}"
    if layer.type != "Conv2D" or len(layer.input_shape) != 3:
        return caption
    size, kernel, stride = layer.input_shape[0], layer.kernel_size[0], layer.strides[0]
    span = layer.dilation_rate[0] * (kernel - 1) + 1
    padding = sum(layer.padding_amount[:2])
    return (
        f"{caption}, {layer.filters} filters, {layer.activation}\n"
        f"kernel {shape(layer.kernel_size)}, strides {shape(layer.strides)}, "
        f"dilation {shape(layer.dilation_rate)}, padding {layer.padding} "
        f"{list(layer.padding_amount)} (top, bottom, left, right)\n"
        f"O = ⌊(I − K_eff + 2P) / S⌋ + 1 = ⌊({size} − {span} + {padding}) / {stride}⌋ + 1"
        f" = {layer.output_shape[0]}"
    )


def _figure(plt: Any, rows: int, columns: int, width: float, height: float) -> tuple[Any, Any]:
    """A figure of rows x columns tiles, `width` x `height` inches each, wide enough for the
    caption."""
    size = (max(6.0, width * columns + 1.2), height * rows + 1.3)
    figure, axes = plt.subplots(rows, columns, figsize=size, squeeze=False, layout="constrained")
    return figure, axes


def _grid(count: int) -> tuple[int, int]:
    columns = math.ceil(math.sqrt(count))
    return math.ceil(count / columns), columns


def _save(plt: Any, figure: Any, path: Path | str, caption: str) -> tuple[int, int]:
    """Write the PNG, cropped to what is drawn; returns its (width, height) in pixels."""
    figure.suptitle(caption, fontsize=9)
    figure.savefig(path, dpi=100, bbox_inches="tight", pad_inches=0.15)
    plt.close(figure)
    width, height = struct.unpack(">II", Path(path).read_bytes()[16:24])  # PNG's IHDR
    return width, height


def feature_map_png(
    path: Path | str, values: np.ndarray, layer: Layer, what: str
) -> tuple[int, int]:
    """One image's `values` [H, W, C] as a grid of its channels on one shared scale (so that
    channels compare), with the layer in the caption. Returns (width, height) in pixels."""
    plt = pyplot()
    channels = min(values.shape[-1], MAX_TILES)
    rows, columns = _grid(channels)
    figure, axes = _figure(plt, rows, columns, 1.3, 1.3)
    low, high = float(values.min()), float(values.max())
    for channel, ax in enumerate(axes.flat):
        ax.axis("off")
        if channel < channels:
            shown = ax.imshow(values[..., channel], cmap="gray", vmin=low, vmax=high)
            ax.set_title(f"channel {channel}", fontsize=7)
    figure.colorbar(shown, ax=axes, shrink=0.6)
    more = (
        f" (first {channels} of {values.shape[-1]} channels)" if channels < values.shape[-1] else ""
    )
    return _save(plt, figure, path, f"{what} of image 0{more}\n{layer_caption(layer)}")


def explain_png(
    path: Path | str,
    images: np.ndarray,
    heatmaps: np.ndarray,
    classes: Sequence[int],
    probabilities: np.ndarray,
    class_names: Sequence[str],
    layer: Layer | None,
    method: str,
) -> tuple[int, int]:
    """Each image [N, H, W] or [N, H, W, 1 or 3] (pixels 0..255) with its heatmap over it, each
    heatmap scaled to its own maximum, titled with the explained class and its probability."""
    plt = pyplot()
    count = min(len(images), MAX_TILES)
    rows, columns = _grid(count)
    figure, axes = _figure(plt, rows, columns, 2.0, 2.1)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= count:
            continue
        peak = float(heatmaps[index].max())
        image = images[index]
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        ax.imshow(np.asarray(image, np.uint8), cmap="gray", vmin=0, vmax=255)
        ax.imshow(heatmaps[index] / peak if peak > 0 else heatmaps[index], cmap="jet",
                  alpha=0.45, vmin=0, vmax=1)  # fmt: skip
        label = int(classes[index])
        ax.set_title(f"{class_names[label]} {probabilities[index, label]:.2f}"
                     + ("" if peak > 0 else "\n(no positive evidence)"), fontsize=7)  # fmt: skip
    name = {"gradcam": "Grad-CAM", "hirescam": "HiResCAM", "occlusion": "Occlusion"}.get(
        method, method
    )
    return _save(plt, figure, path, f"{name} at {layer_caption(layer)}" if layer else name)


def filters_png(
    path: Path | str, kernels: np.ndarray, biases: np.ndarray | None, layer: Layer
) -> tuple[int, int]:
    """A conv layer's kernels [KH, KW, C_in, C_out] on one diverging scale centred on 0 (red
    positive, blue negative). One input channel: a grid of the filters. More: a row per input
    channel (at most 8), a column per filter (at most 16)."""
    plt = pyplot()
    single = kernels.shape[2] == 1
    in_channels = min(kernels.shape[2], 8)
    filters = min(kernels.shape[3], MAX_TILES if single else 16)
    shown = kernels[:, :, :in_channels, :filters]
    limit = float(np.abs(shown).max()) or 1.0
    rows, columns = _grid(filters) if single else (in_channels, filters)
    figure, axes = _figure(plt, rows, columns, 0.9, 0.9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    for c in range(in_channels):
        for f in range(filters):
            ax = axes.flat[f] if single else axes[c, f]
            ax.set_frame_on(True)
            image = ax.imshow(shown[:, :, c, f], cmap="RdBu_r", vmin=-limit, vmax=limit)
            if single or c == 0:
                bias = f"\nb {biases[f]:+.2f}" if biases is not None else ""
                ax.set_title(f"filter {f}{bias}", fontsize=6)
            if not single and f == 0:
                ax.set_ylabel(f"input {c}", fontsize=6)
    figure.colorbar(image, ax=axes, shrink=0.6)
    what = f"kernels {list(kernels.shape)} (KH, KW, C_in, C_out)"
    if shown.shape != kernels.shape:
        what += f", input channels 0–{in_channels - 1}, filters 0–{filters - 1}"
    return _save(plt, figure, path, f"{what}\n{layer_caption(layer)}")
