"""numpy ⇄ tensors on the wire (convserve.v1's `Tensor`, the Open Inference Protocol's inputs)
and `artifact.Layer` ⇄ `convserve.v1.Layer`: the one codec, with one set of checks, that the
client and every API of the server use."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from convserve.api.pb.convserve.v1 import convserve_pb2 as pb
from convserve.api.pb.inference import grpc_predict_v2_pb2 as v2
from convserve.artifact import Layer

__all__ = [
    "DTYPES",
    "EXPLAIN_METHODS",
    "INFERENCE_DATATYPES",
    "METHOD_NAMES",
    "TensorError",
    "decode",
    "dtype_name",
    "from_infer_input",
    "from_layer_message",
    "from_tensor",
    "from_values",
    "layer_message",
    "to_tensor",
]

# Wire dtypes and their little-endian numpy equivalents.
DTYPES: dict[pb.DataType, np.dtype[np.generic]] = {
    pb.DATA_TYPE_UINT8: np.dtype("<u1"),
    pb.DATA_TYPE_FLOAT32: np.dtype("<f4"),
}
_CODES = {dtype: code for code, dtype in DTYPES.items()}
# The Open Inference Protocol's datatypes convserve takes, their numpy equivalents, and the
# typed-contents field that carries each.
INFERENCE_DATATYPES: dict[str, tuple[np.dtype[Any], str]] = {
    "UINT8": (np.dtype("<u1"), "uint_contents"),
    "FP32": (np.dtype("<f4"), "fp32_contents"),
}

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
    """convserve.v1's Tensor → an array viewing its bytes (read-only), checked (see `decode`)."""
    dtype = DTYPES.get(tensor.dtype)
    if dtype is None:
        raise TensorError(
            f"tensor dtype {dtype_name(tensor.dtype)} is not supported; expected uint8 or float32"
        )
    return decode(tensor.content, dtype, tensor.shape)


def from_infer_input(
    tensor: v2.ModelInferRequest.InferInputTensor, raw: bytes | None
) -> np.ndarray | list[bytes]:
    """An Open Inference Protocol input → an array: from its `raw` bytes (the request's
    raw_input_contents entry, viewed read-only, see `decode`) or else its typed contents.
    A BYTES input, shape [N] or [N, 1], is N files (PNG or JPEG): their bytes."""
    what = f"input {tensor.name!r}"
    if tensor.datatype == "BYTES":
        return _files(tensor, raw, what)
    if tensor.datatype not in INFERENCE_DATATYPES:
        expected = " or ".join([*INFERENCE_DATATYPES, "BYTES"])
        raise TensorError(f"{what} has datatype {tensor.datatype!r}; expected {expected}")
    dtype, typed_field = INFERENCE_DATATYPES[tensor.datatype]
    if raw is not None:
        return decode(raw, dtype, tensor.shape, f"{what} raw_input_contents")
    values = getattr(tensor.contents, typed_field)
    return from_values(values, dtype, tensor.shape, f"{what} contents.{typed_field}")


def _files(
    tensor: v2.ModelInferRequest.InferInputTensor, raw: bytes | None, what: str
) -> list[bytes]:
    """A BYTES input's elements: typed `bytes_contents`, or `raw` as the protocol lays them
    out, each a 4-byte little-endian length and then that many bytes."""
    shape = _shape(tensor.shape, what)
    if len(shape) not in (1, 2) or shape[1:] not in ((), (1,)):
        raise TensorError(f"{what}: BYTES shape {list(shape)}; expected [N] or [N, 1], N files")
    if raw is None:
        files = list(tensor.contents.bytes_contents)
    else:
        files, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise TensorError(f"{what} raw_input_contents ends inside an element's length")
            size = int.from_bytes(raw[offset : offset + 4], "little")
            offset += 4 + size
            if offset > len(raw):
                raise TensorError(
                    f"{what} raw_input_contents: element {len(files)} says {size} bytes, "
                    f"{len(raw) - offset + size} are left"
                )
            files.append(raw[offset - size : offset])
    if len(files) != shape[0]:
        raise TensorError(f"{what} has {len(files)} elements but shape {list(shape)}")
    return files


def decode(
    content: bytes, dtype: np.dtype[Any], shape: Sequence[int], what: str = "tensor"
) -> np.ndarray:
    """Little-endian `content` as an array of `dtype` and `shape`, without copying (read-only:
    it views the bytes); the size is checked against shape × itemsize first."""
    shape = _shape(shape, what)
    expected = math.prod(shape) * dtype.itemsize
    if len(content) != expected:
        raise TensorError(
            f"{what} has {len(content)} bytes but shape {list(shape)} of {dtype.name} "
            f"needs {expected}"
        )
    try:
        return np.frombuffer(content, dtype=dtype).reshape(shape)
    except ValueError as exc:  # e.g. a zero dimension beside huge ones
        raise TensorError(f"{what} shape {list(shape)}: {exc}") from None


def from_values(
    values: Sequence[float], dtype: np.dtype[Any], shape: Sequence[int], what: str = "tensor"
) -> np.ndarray:
    """Typed values (numbers, not bytes) as an array of `dtype` and `shape`: as many as the
    shape needs, and for uint8 each 0..255."""
    shape = _shape(shape, what)
    count = math.prod(shape)
    if len(values) != count:
        raise TensorError(f"{what} has {len(values)} values but shape {list(shape)} needs {count}")
    array = np.asarray(values, dtype=np.float32 if dtype.kind == "f" else np.int64)
    if dtype.kind == "u" and count and (array.min() < 0 or array.max() > 255):
        raise TensorError(f"{what}: {dtype.name} values must be 0..255")
    try:
        typed: np.ndarray = array.astype(dtype).reshape(shape)
    except ValueError as exc:  # e.g. a zero dimension beside huge ones
        raise TensorError(f"{what} shape {list(shape)}: {exc}") from None
    return typed


def _shape(shape: Sequence[int], what: str) -> tuple[int, ...]:
    shape = tuple(shape)
    if any(dim < 0 for dim in shape):
        raise TensorError(f"{what} shape {list(shape)} has a negative dimension")
    return shape


def layer_message(layer: Layer) -> pb.Layer:
    """A layer as the wire's `Layer`: the window for a layer with one (Conv2D, pooling), filters
    and activation for Conv2D layers only."""
    message = pb.Layer(
        name=layer.name,
        type=layer.type,
        input_shape=layer.input_shape,
        output_shape=layer.output_shape,
        parameters=layer.parameters,
    )
    if layer.has_window:
        message.kernel_size.extend(layer.kernel_size)
        message.strides.extend(layer.strides)
        message.padding = layer.padding
        message.padding_amount.extend(layer.padding_amount)
        message.dilation_rate.extend(layer.dilation_rate)
    if layer.is_conv:
        message.filters = layer.filters
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
