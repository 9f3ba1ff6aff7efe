"""Every malformed request gets its status and a message that says what was expected; the
server answers the next request as if nothing happened."""

from __future__ import annotations

import re
import struct
import zlib

import grpc
import numpy as np
import pytest

from client import Client
from convserve.api.codec import to_tensor
from convserve.api.pb.convserve.v1 import convserve_pb2 as pb
from convserve.api.pb.convserve.v1 import convserve_pb2_grpc as pb_grpc
from tests.conftest import MAX_IMAGES

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
GOOD = np.zeros((1, 28, 28), np.uint8)


def _tensor(array: np.ndarray) -> pb.Images:
    return pb.Images(tensor=to_tensor(array))


def _png(width: int, height: int) -> bytes:
    import tensorflow as tf

    return bytes(tf.io.encode_png(np.zeros((height, width, 1), np.uint8)).numpy())


def _claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims `width` x `height` pixels (its CRC recomputed)."""
    data = bytearray(_png(28, 28))
    data[16:24] = struct.pack(">II", width, height)  # IHDR: the first chunk, after the signature
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _predict(images: pb.Images | None = None, **fields: object) -> pb.PredictRequest:
    return pb.PredictRequest(images=images, **fields)  # type: ignore[arg-type]


def _raw(dtype: int, shape: list[int], content: bytes = b"") -> pb.Images:
    return pb.Images(tensor=pb.Tensor(dtype=dtype, shape=shape, content=content))  # type: ignore[arg-type]


def _files(*files: bytes) -> pb.Images:
    return pb.Images(encoded=pb.EncodedImages(files=files))


def _model(name: str, version: int = 0) -> pb.ModelSpec:
    return pb.ModelSpec(name=name, version=version)


U8, F32 = pb.DATA_TYPE_UINT8, pb.DATA_TYPE_FLOAT32
NAN = np.array([np.zeros((28, 28)), np.full((28, 28), np.nan)], np.float32)

# name: (request, status, what the message must say)
CASES = {
    "no images": (_predict(), INVALID, "no images: set images.tensor"),
    "empty batch": (_predict(_raw(U8, [0, 28, 28])), INVALID, "no images; expected at least 1"),
    "wrong shape": (
        _predict(_tensor(np.zeros((2, 32, 32), np.uint8))),
        INVALID, r"shape \[2, 32, 32\]; expected \[N, 28, 28\]",
    ),
    "one dimension": (_predict(_raw(U8, [784], bytes(784))), INVALID, r"shape \[784\]; expected"),
    "wrong dtype": (
        _predict(_raw(0, [1, 28, 28], bytes(784))),
        INVALID, "dtype unspecified is not supported; expected uint8 or float32",
    ),
    "bytes off by one": (
        _predict(_raw(F32, [1, 28, 28], bytes(3135))),
        INVALID, r"3135 bytes but shape \[1, 28, 28\] of float32 needs 3136",
    ),
    "negative dimension": (_predict(_raw(U8, [-1, 28, 28])), INVALID, "negative dimension"),
    "too many images": (
        _predict(_raw(U8, [MAX_IMAGES + 1, 784], bytes((MAX_IMAGES + 1) * 784))),
        grpc.StatusCode.RESOURCE_EXHAUSTED, f"at most {MAX_IMAGES} \\(max_images\\)",
    ),
    "nan": (_predict(_tensor(NAN)), INVALID, "image 1 has NaN or infinite"),
    "inf": (_predict(_tensor(np.full((1, 28, 28), np.inf, np.float32))), INVALID, "has NaN"),
    "not an image file": (_predict(_files(b"hello")), INVALID, "image 0: not a PNG or JPEG"),
    "broken png": (_predict(_files(_png(28, 28)[:60])), INVALID, "image 0: cannot decode it"),
    "a large image in a small file": (
        _predict(_files(_claiming(10_000, 5_000))),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "image 0: 10000x5000 is 50,000,000 pixels; at most 25,000,000 are decoded per image",
    ),
    "a decompression bomb": (
        _predict(_files(_claiming(100_000, 100_000))),
        grpc.StatusCode.RESOURCE_EXHAUSTED, "image 0: Image size .* could be decompression bomb",
    ),
    "negative top_k": (_predict(_tensor(GOOD), top_k=-1), INVALID, "top_k must be >= 0"),
    "unknown model": (
        _predict(_tensor(GOOD), model=_model("shoes")),
        NOT_FOUND, "model 'shoes' is not loaded; loaded models: cam, fashion, layers",
    ),
    "unknown version": (
        _predict(_tensor(GOOD), model=_model("fashion", 7)),
        NOT_FOUND, "model 'fashion' has no version 7; loaded versions: 1",
    ),
    "negative version": (
        _predict(_tensor(GOOD), model=_model("fashion", -2)), INVALID, "version must be positive"
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_predict_requests(server, case: str) -> None:
    request, code, message = CASES[case]
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ConvServeStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, timeout=30)
        assert caught.value.code() == code, caught.value.details()

        assert re.search(message, caught.value.details()), caught.value.details()
        # The server still answers.
        assert (
            stub.Predict(pb.PredictRequest(images=_tensor(GOOD)), timeout=30).model.name
            == "fashion"
        )


def test_bad_feature_map_and_metadata_requests(server) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ConvServeStub(channel)
        for call, request, code in [
            (stub.FeatureMap, pb.FeatureMapRequest(images=_tensor(GOOD), layer="dense"), NOT_FOUND),
            (stub.FeatureMap, pb.FeatureMapRequest(layer="conv2d"), INVALID),
            (
                stub.GetModelMetadata,
                pb.GetModelMetadataRequest(model=pb.ModelSpec(name="x")),
                NOT_FOUND,
            ),
        ]:
            with pytest.raises(grpc.RpcError) as caught:
                call(request, timeout=30)
            assert caught.value.code() == code


def test_unexpected_exception_is_internal_with_a_generic_message(
    server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = server.server.repository.get("fashion")

    def broken(*args: object, **kwargs: object) -> np.ndarray:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(model, "feature_map", broken)
    with Client(server.target) as client, pytest.raises(Exception) as caught:
        client.feature_map(GOOD)
    assert caught.value.code == grpc.StatusCode.INTERNAL
    assert "secret" not in str(caught.value) and "server log" in str(caught.value)
    assert "secret detail" in caplog.text  # the traceback is in the server's log
    monkeypatch.undo()
    with Client(server.target) as client:
        assert client.feature_map(GOOD).model == "fashion"
