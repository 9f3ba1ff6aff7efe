"""The codec both sides use: what goes in comes out, and a lying tensor is refused."""

from __future__ import annotations

import numpy as np
import pytest

from convserve.api.codec import TensorError, from_tensor, to_tensor
from convserve.api.pb.convserve.v1 import convserve_pb2 as pb


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
