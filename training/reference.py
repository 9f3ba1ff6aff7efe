"""Convolution in plain numpy, as the course computes it by hand, and the output-size formula.

Keras `Conv2D` computes a cross-correlation (the kernel is not flipped); so does everything
here. These functions are the ground truth the tests hold Keras, and the server, to.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "conv1d_loop",
    "conv2d",
    "conv2d_loop",
    "effective_kernel",
    "output_size",
    "same_padding",
]


def effective_kernel(kernel: int, dilation: int = 1) -> int:
    """The span a dilated kernel covers: K_eff = d·(K − 1) + 1."""
    return dilation * (kernel - 1) + 1


def same_padding(size: int, kernel: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """Zero padding (before, after) that 'same' adds on one axis, split as TensorFlow splits it.

    The output is ceil(I / S); the total padding is what that output needs, the odd pixel after.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + effective_kernel(kernel, dilation) - size, 0)
    return total // 2, total - total // 2


def output_size(
    size: int, kernel: int, stride: int = 1, padding: str | int = "valid", dilation: int = 1
) -> int:
    """O = floor((I − K_eff + 2P) / S) + 1, where `padding` is 'valid' (P = 0), 'same' or P itself.

    For 'same', 2P is the total padding (it can be odd: TensorFlow pads the extra pixel after).
    """
    if padding == "valid":
        total = 0
    elif padding == "same":
        total = sum(same_padding(size, kernel, stride, dilation))
    elif isinstance(padding, int) and padding >= 0:
        total = 2 * padding
    else:
        raise ValueError(f"padding must be 'valid', 'same' or a non-negative int, got {padding!r}")
    return (size - effective_kernel(kernel, dilation) + total) // stride + 1


def conv1d_loop(signal: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The course's 1-D loop: slide `kernel` over `signal`, one dot product per position.

    With kernel [-1, 1] this is an edge detector: non-zero exactly where the signal changes.
    """
    n = len(signal) - len(kernel) + 1
    result = np.zeros(n)
    for i in range(n):
        result[i] = (kernel * signal[i : i + len(kernel)]).sum()
    return result


def conv2d_loop(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The course's 2-D loop over one grayscale image: 'valid' padding, stride 1, no dilation."""
    rows = image.shape[0] - kernel.shape[0] + 1
    cols = image.shape[1] - kernel.shape[1] + 1
    result = np.zeros((rows, cols))
    for i in range(rows):
        for j in range(cols):
            window = image[i : i + kernel.shape[0], j : j + kernel.shape[1]]
            result[i, j] = (window * kernel).sum()
    return result


def conv2d(
    images: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    strides: int | tuple[int, int] = 1,
    padding: str = "valid",
    dilation: int | tuple[int, int] = 1,
) -> np.ndarray:
    """Vectorised multi-channel convolution with Keras `Conv2D` semantics (before activation).

    images [N, H, W, C_in], kernel [KH, KW, C_in, C_out] (Keras layout), bias [C_out]
    → [N, OH, OW, C_out] in float64.
    """
    sh, sw = (strides, strides) if isinstance(strides, int) else strides
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    kh, kw, c_in, c_out = kernel.shape
    if images.ndim != 4 or images.shape[3] != c_in:
        raise ValueError(f"images must be [N, H, W, {c_in}], got {list(images.shape)}")
    x = images.astype(np.float64)
    if padding == "same":
        pad_h = same_padding(x.shape[1], kh, sh, dh)
        pad_w = same_padding(x.shape[2], kw, sw, dw)
        x = np.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
    elif padding != "valid":
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    out_h = output_size(x.shape[1], kh, sh, "valid", dh)
    out_w = output_size(x.shape[2], kw, sw, "valid", dw)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"kernel {kh}x{kw} (dilation {dh}x{dw}) is larger than the padded input")
    out = np.zeros((x.shape[0], out_h, out_w, c_out))
    for i in range(kh):
        for j in range(kw):
            # Every output pixel's (i, j) tap at once: a strided view of the (dilated) offsets.
            taps = x[:, i * dh : i * dh + sh * out_h : sh, j * dw : j * dw + sw * out_w : sw, :]
            out += taps @ kernel[i, j].astype(np.float64)
    if bias is not None:
        out += bias
    return out
