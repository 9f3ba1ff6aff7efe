"""A numpy runtime compiled from a Keras model: the same arithmetic without TensorFlow's
per-call overhead, which dominates for models this small (≈0.1 ms instead of ≈0.7 ms at batch 1).

It covers the layers convserve's trainer builds; `NumpyRuntime.compile` raises
`Unsupported` for anything else and the server falls back to TensorFlow, the reference.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from convserve.artifact import Layer

__all__ = ["NumpyRuntime", "Unsupported"]

Array = np.ndarray
Op = Callable[[Array], Array]


class Unsupported(ValueError):
    """A layer or option the numpy runtime does not implement."""


# Larger batches are run in chunks of this many images: bounded scratch memory per thread.
CHUNK_IMAGES = 256
_scratch = threading.local()


def _workspace(key: int, shape: tuple[int, ...]) -> Array:
    """A float32 scratch array for `shape`, reused by this thread across calls.

    Fresh multi-megabyte arrays cost a page fault per 4 KiB on every call (measured: 3x
    the arithmetic of a 64-image batch on this VM); reusing them costs nothing.
    """
    buffers: dict[int, Array] = _scratch.__dict__.setdefault("buffers", {})
    size = math.prod(shape)
    buffer = buffers.get(key)
    if buffer is None or buffer.size < size:
        buffer = buffers[key] = np.empty(size, np.float32)
    return buffer[:size].reshape(shape)


def _sigmoid(x: Array) -> Array:
    result: Array = np.exp(-np.logaddexp(0, -x)).astype(np.float32, copy=False)
    return result


def _softmax(x: Array) -> Array:
    e: Array = np.exp(x - x.max(axis=-1, keepdims=True))
    e /= e.sum(axis=-1, keepdims=True)
    return e


_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805

# In-place where possible: the input is always a fresh intermediate the op owns.
ACTIVATIONS: dict[str, Op] = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0, out=x),
    "relu6": lambda x: np.clip(x, 0, 6, out=x),
    "leaky_relu": lambda x: np.where(x >= 0, x, np.float32(0.2) * x),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
    "selu": lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0))),
    "tanh": lambda x: np.tanh(x, out=x),
    "sigmoid": _sigmoid,
    "silu": lambda x: x * _sigmoid(x),
    "swish": lambda x: x * _sigmoid(x),
    "softplus": lambda x: np.logaddexp(0, x).astype(np.float32, copy=False),
    "softmax": _softmax,
}


def _activation(layer: Any) -> Op:
    name = layer.activation.__name__
    if name not in ACTIVATIONS:
        raise Unsupported(f"{layer.name}: activation {name!r}")
    return ACTIVATIONS[name]


def _conv(layer: Any, ordinal: int, padding_amount: tuple[int, ...]) -> Op:
    if layer.data_format != "channels_last" or layer.groups != 1:
        raise Unsupported(f"{layer.name}: data_format/groups")
    kernel, *bias = layer.get_weights()
    kh, kw, c_in, c_out = kernel.shape
    taps = kh * kw * c_in
    # The bias rides along as one more row of the matrix against a column of ones: one
    # pass over the output fewer (this machine is memory-bound at these sizes).
    matrix = np.vstack([kernel.reshape(taps, c_out), *bias]).astype(np.float32)
    (sh, sw), (dh, dw) = layer.strides, layer.dilation_rate
    top, bottom, left, right = padding_amount  # what the artifact recorded: 'same' split as TF does
    activation = _activation(layer)
    # Scratch arrays shared by every conv of every model on this thread: the columns are dead
    # once multiplied; outputs alternate so a conv never writes over its own input.
    columns_key, out_key = 0, 1 + ordinal % 2

    def conv(x: Array) -> Array:
        n, h, w, _ = x.shape
        if top or bottom or left or right:
            x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
            h, w = x.shape[1:3]
        out_h, out_w = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
        # im2col: one column block per kernel tap, then a single matrix product.
        columns = _workspace(columns_key, (n, out_h, out_w, len(matrix)))
        for i in range(kh):
            for j in range(kw):
                tap = (i * kw + j) * c_in
                columns[..., tap : tap + c_in] = x[
                    :, i * dh : i * dh + sh * out_h : sh, j * dw : j * dw + sw * out_w : sw, :
                ]
        columns[..., taps:] = 1
        out = _workspace(out_key, (n * out_h * out_w, c_out))
        np.matmul(columns.reshape(-1, len(matrix)), matrix, out=out)
        return activation(out).reshape(n, out_h, out_w, c_out)

    return conv


def _dense(layer: Any) -> Op:
    kernel, *rest = layer.get_weights()
    kernel = kernel.astype(np.float32)
    # One image: BLAS's matrix-vector product over the kernel's rows is ~2x faster than the
    # 1-row matrix product over its columns (measured, 6760x10).
    rows = np.ascontiguousarray(kernel.T)
    bias = rest[0].astype(np.float32) if rest else None
    activation = _activation(layer)

    def dense(x: Array) -> Array:
        out = x @ kernel if len(x) > 1 else (rows @ x[0])[None]
        if bias is not None:
            out += bias
        return activation(out)

    return dense


def _batch_norm(layer: Any) -> Op:
    if layer.axis not in (-1, 3, [-1], [3]):
        raise Unsupported(f"{layer.name}: axis {layer.axis}")
    weights = dict(
        zip([w.path.rsplit("/", 1)[-1] for w in layer.weights], layer.get_weights(), strict=True)
    )
    scale = 1 / np.sqrt(weights["moving_variance"] + layer.epsilon)
    if "gamma" in weights:
        scale = scale * weights["gamma"]
    shift = -weights["moving_mean"] * scale + weights.get("beta", 0)
    scale, shift = scale.astype(np.float32), np.asarray(shift, np.float32)
    return lambda x: x * scale + shift


def _max_pool(layer: Any) -> Op:
    (ph, pw), strides = layer.pool_size, layer.strides
    if tuple(strides) != (ph, pw) or layer.padding != "valid":
        raise Unsupported(f"{layer.name}: strides other than the pool size, or padding 'same'")

    def pool(x: Array) -> Array:
        n, h, w, c = x.shape
        oh, ow = h // ph, w // pw
        pooled: Array = x[:, : oh * ph, : ow * pw].reshape(n, oh, ph, ow, pw, c).max(axis=(2, 4))
        return pooled

    return pool


def _compile(layer: Any, ordinal: int, described: dict[str, Layer]) -> Op | None:
    """The op for one layer; `ordinal` counts the conv layers before it."""
    kind = type(layer).__name__
    if kind == "InputLayer" or kind == "Dropout":
        return None
    if kind == "Conv2D":
        return _conv(layer, ordinal, described[layer.name].padding_amount)
    if kind == "Dense":
        return _dense(layer)
    if kind == "BatchNormalization":
        return _batch_norm(layer)
    if kind == "MaxPooling2D":
        return _max_pool(layer)
    if kind == "Flatten":
        return lambda x: x.reshape(len(x), -1)
    if kind == "GlobalAveragePooling2D" and not layer.keepdims:
        return lambda x: x.mean(axis=(1, 2))
    raise Unsupported(f"{layer.name}: layer type {kind}")


class NumpyRuntime:
    """`predict(pixels)` for a sequential Keras model, preprocessing (scale, offset) included."""

    def __init__(self, ops: list[Op], scale: float, offset: float) -> None:
        self._ops = ops
        self._scale, self._offset = np.float32(scale), np.float32(offset)

    @classmethod
    def compile(
        cls, model: Any, scale: float, offset: float, layers: tuple[Layer, ...]
    ) -> NumpyRuntime:
        """`layers` are the artifact's descriptions of `model`'s layers (conv padding amounts).
        Raises `Unsupported` if any layer is outside what this runtime implements."""
        for previous, layer in itertools.pairwise(model.layers):
            if len(layer._inbound_nodes) != 1 or layer.input is not previous.output:
                raise Unsupported(f"{layer.name}: not a plain sequential stack")
        ops, convs = [], 0
        described = {layer.name: layer for layer in layers}
        for layer in model.layers:
            op = _compile(layer, convs, described)
            convs += type(layer).__name__ == "Conv2D"
            if op is not None:
                ops.append(op)
        return cls(ops, scale, offset)

    def predict(self, pixels: Array) -> Array:
        """Pixels float32 [N, H, W, C], 0..255 → the model's output, float32 [N, classes]."""
        if len(pixels) <= CHUNK_IMAGES:
            return self._run(pixels)
        return np.concatenate(
            [self._run(pixels[i : i + CHUNK_IMAGES]) for i in range(0, len(pixels), CHUNK_IMAGES)]
        )

    def _run(self, pixels: Array) -> Array:
        x = pixels * self._scale
        if self._offset:
            x += self._offset
        for op in self._ops:
            x = op(x)
        return np.array(x, np.float32)  # never a view of a scratch array
