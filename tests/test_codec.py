"""The codec both sides use: what goes in comes out, and a lying tensor is refused."""

from __future__ import annotations

import numpy as np
import pytest

from convserve.api.codec import (
    TensorError,
    from_layer_message,
    from_tensor,
    layer_message,
    to_tensor,
)
from convserve.api.pb.convserve.v1 import convserve_pb2 as pb
from convserve.artifact import Layer

CONV = Layer("conv2d", "Conv2D", (28, 28, 1), (13, 13, 4), 40, filters=4, kernel_size=(3, 3),
             strides=(2, 2), padding="valid", padding_amount=(0, 0, 0, 0), dilation_rate=(1, 1),
             activation="relu")  # fmt: skip
MAX_POOL = Layer("max_pooling2d", "MaxPooling2D", (13, 13, 4), (6, 6, 4), 0, kernel_size=(2, 2),
                 strides=(2, 2), padding="valid", padding_amount=(0, 0, 0, 0),
                 dilation_rate=(1, 1))  # fmt: skip
AVERAGE_POOL = Layer("average_pooling2d", "AveragePooling2D", (13, 13, 4), (7, 7, 4), 0,
                     kernel_size=(3, 3), strides=(2, 2), padding="same",
                     padding_amount=(1, 1, 1, 1), dilation_rate=(1, 1))  # fmt: skip


@pytest.mark.parametrize("dtype", ["<u1", "<f4", ">f4"])
def test_round_trip(dtype: str) -> None:
    array = (np.arange(2 * 3 * 4) % 251).astype(dtype).reshape(2, 3, 4)[:, ::-1]  # non-contiguous
    decoded = from_tensor(pb.Tensor.FromString(to_tensor(array).SerializeToString()))
    np.testing.assert_array_equal(decoded, array)
    assert decoded.dtype.byteorder in ("<", "|", "=")


def test_decoding_does_not_copy() -> None:
    tensor = to_tensor(np.ones((4, 4), np.float32))
    decoded = from_tensor(tensor)
    assert not decoded.flags.owndata and not decoded.flags.writeable


def test_only_uint8_and_float32_are_sent() -> None:
    with pytest.raises(
        TensorError, match="dtype float64 cannot be sent; expected uint8 or float32"
    ):
        to_tensor(np.zeros(3))


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (
            pb.Tensor(dtype=pb.DATA_TYPE_UINT8, shape=[2, 2], content=b"abc"),
            r"3 bytes but shape \[2, 2\] of uint8 needs 4",
        ),
        (
            pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[1], content=b"abcde"),
            "5 bytes but shape .* needs 4",
        ),
        (pb.Tensor(dtype=7, shape=[1], content=b"a"), "tensor dtype dtype 7 is not supported"),
        (pb.Tensor(dtype=pb.DATA_TYPE_UINT8, shape=[2, -2], content=b"abcd"), "negative dimension"),
        (
            pb.Tensor(dtype=pb.DATA_TYPE_UINT8, shape=[2**40, 2**40], content=b""),
            "needs 1208925819614629174706176",
        ),
    ],
)
def test_inconsistent_tensors_are_refused(tensor: pb.Tensor, message: str) -> None:
    with pytest.raises(TensorError, match=message):
        from_tensor(tensor)


def test_a_shape_numpy_cannot_make_is_a_tensor_error() -> None:
    tensor = pb.Tensor(dtype=pb.DATA_TYPE_UINT8, shape=[2**62, 2**62, 0], content=b"")
    with pytest.raises(TensorError, match=r"tensor shape \[4611686018427387904"):
        from_tensor(tensor)


@pytest.mark.parametrize(
    "layer",
    [
        CONV,
        MAX_POOL,
        AVERAGE_POOL,
        Layer("max_pooling2d", "MaxPooling2D", (26, 26, 4), (13, 13, 4), 0),  # an old artifact's
        Layer("flatten", "Flatten", (6, 6, 4), (144,), 0),
    ],
)
def test_layers_round_trip_through_the_wire(layer: Layer) -> None:
    message = pb.Layer.FromString(layer_message(layer).SerializeToString())
    assert from_layer_message(message) == layer


def test_pooling_layers_send_their_window_and_only_convs_their_filters() -> None:
    pool, conv = layer_message(AVERAGE_POOL), layer_message(CONV)
    assert (list(pool.kernel_size), list(pool.strides), pool.padding) == ([3, 3], [2, 2], "same")
    assert (list(pool.padding_amount), list(pool.dilation_rate)) == ([1, 1, 1, 1], [1, 1])
    assert (pool.filters, pool.activation) == (0, "")
    assert (conv.filters, conv.activation, list(conv.kernel_size)) == (4, "relu", [3, 3])
