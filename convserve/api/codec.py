"""numpy ⇄ `convserve.v1.Tensor` and `artifact.Layer` ⇄ `convserve.v1.Layer`: the one codec
the client and the server both use."""

from __future__ import annotations

import math

import numpy as np

from convserve.api.pb.convserve.v1 import convserve_pb2 as pb
from convserve.artifact import Layer

__all__ = [
    "DTYPES",
    "EXPLAIN_METHODS",
    "METHOD_NAMES",
    "TensorError",
    "dtype_name",
    "from_layer_message",
    "from_tensor",
    "layer_message",
    "to_tensor",
]

# Wire dtypes and their little-endian numpy equivalents.
DTYPES: dict[pb.DataType, np.dtype[np.generic]] = {
    pb.DATA_TYPE_UINT8: np.dtype("<u1"),
    pb.DATA_TYPE_FLOAT32: np.dtype("<f4"),
}
_CODES = {dtype: code for code, dtype in DTYPES.items()}

# Explain's methods by the names the client, the server and V2 outputs use, and back.
EXPLAIN_METHODS: dict[str, pb.ExplainMethod] = {
    "gradcam": pb.EXPLAIN_METHOD_GRAD_CAM,
    "hirescam": pb.EXPLAIN_METHOD_HIRES_CAM,
    "occlusion": pb.EXPLAIN_METHOD_OCCLUSION,
}
METHOD_NAMES = {number: name for name, number in EXPLAIN_METHODS.items()}


class TensorError(ValueError):
    """A tensor whose dtype, shape and bytes do not agree."""


def dtype_name(code: pb.DataType) -> str:
    """`DATA_TYPE_UINT8` → `uint8`; unknown codes by number."""
    try:
        return pb.DataType.Name(code).removeprefix("DATA_TYPE_").lower()
    except ValueError:
        return f"dtype {code}"


def to_tensor(array: np.ndarray) -> pb.Tensor:
    """Encode a uint8 or float32 array (any byte order, any strides)."""
    dtype = array.dtype.newbyteorder("<")
    code = _CODES.get(dtype)
    if code is None:
        raise TensorError(f"dtype {array.dtype} cannot be sent; expected uint8 or float32")
    content = np.ascontiguousarray(array, dtype=dtype).tobytes()
    return pb.Tensor(dtype=code, shape=array.shape, content=content)


def from_tensor(tensor: pb.Tensor) -> np.ndarray:
    """Decode without copying the bytes; the size is checked against shape × itemsize first.

    The array is read-only: it views the message's bytes.
    """
    dtype = DTYPES.get(tensor.dtype)
    if dtype is None:
        raise TensorError(
            f"tensor dtype {dtype_name(tensor.dtype)} is not supported; expected uint8 or float32"
        )
    shape = tuple(tensor.shape)
    if any(dim < 0 for dim in shape):
        raise TensorError(f"tensor shape {list(shape)} has a negative dimension")
    expected = math.prod(shape) * dtype.itemsize
    if len(tensor.content) != expected:
        raise TensorError(
            f"tensor content is {len(tensor.content)} bytes but shape {list(shape)} of "
            f"{dtype_name(tensor.dtype)} needs {expected}"
        )
    try:
        return np.frombuffer(tensor.content, dtype=dtype).reshape(shape)
    except ValueError as exc:  # e.g. a zero dimension beside huge ones
        raise TensorError(f"tensor shape {list(shape)}: {exc}") from None


def layer_message(layer: Layer) -> pb.Layer:
    """A layer as the wire's `Layer` (convolution fields for Conv2D layers only)."""
    message = pb.Layer(
        name=layer.name,
        type=layer.type,
        input_shape=layer.input_shape,
        output_shape=layer.output_shape,
        parameters=layer.parameters,
    )
    if layer.is_conv:
        message.filters = layer.filters
        message.kernel_size.extend(layer.kernel_size)
        message.strides.extend(layer.strides)
        message.padding = layer.padding
        message.padding_amount.extend(layer.padding_amount)
        message.dilation_rate.extend(layer.dilation_rate)
        message.activation = layer.activation
    return message


def from_layer_message(message: pb.Layer) -> Layer:
    return Layer(
        name=message.name, type=message.type, input_shape=tuple(message.input_shape),
        output_shape=tuple(message.output_shape), parameters=message.parameters,
        filters=message.filters, kernel_size=tuple(message.kernel_size),
        strides=tuple(message.strides), padding=message.padding,
        padding_amount=tuple(message.padding_amount),
        dilation_rate=tuple(message.dilation_rate), activation=message.activation,
    )  # fmt: skip
