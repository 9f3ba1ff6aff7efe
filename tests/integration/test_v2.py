"""The Open Inference Protocol (KServe V2) on the same port, through its own stubs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from client import Client
from convserve.api.pb.inference import grpc_predict_v2_pb2 as v2
from convserve.api.pb.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from convserve.fashion_mnist import Dataset


@pytest.fixture(scope="module")
def stub(server: Any) -> Iterator[v2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield v2_grpc.GRPCInferenceServiceStub(channel)


def infer_request(
    images: np.ndarray, *, typed: bool = False, **fields: Any
) -> v2.ModelInferRequest:
    datatype = {"uint8": "UINT8", "float32": "FP32"}[images.dtype.name]
    tensor = v2.ModelInferRequest.InferInputTensor(
        name="images", datatype=datatype, shape=images.shape
    )
    request = v2.ModelInferRequest(model_name="fashion", inputs=[tensor], **fields)
    if typed:
        field = "uint_contents" if datatype == "UINT8" else "fp32_contents"
        getattr(tensor.contents, field).extend(images.ravel().tolist())
        request.inputs[0].CopyFrom(tensor)
    else:
        request.raw_input_contents.append(images.tobytes())
    return request


def output(response: v2.ModelInferResponse, index: int = 0) -> np.ndarray:
    tensor = response.outputs[index]
    assert tensor.datatype == "FP32"
    return np.frombuffer(response.raw_output_contents[index], "<f4").reshape(tensor.shape)


def test_server_and_model_status(stub: v2_grpc.GRPCInferenceServiceStub) -> None:
    assert stub.ServerLive(v2.ServerLiveRequest()).live
    assert stub.ServerReady(v2.ServerReadyRequest()).ready
    assert stub.ModelReady(v2.ModelReadyRequest(name="fashion")).ready
    assert stub.ModelReady(v2.ModelReadyRequest(name="fashion", version="1")).ready
    assert not stub.ModelReady(v2.ModelReadyRequest(name="fashion", version="9")).ready
    assert not stub.ModelReady(v2.ModelReadyRequest(name="nope")).ready
    metadata = stub.ServerMetadata(v2.ServerMetadataRequest())
    assert metadata.name == "convserve" and "model_repository" in metadata.extensions


def test_model_metadata_lists_the_input_and_every_output(
    stub: v2_grpc.GRPCInferenceServiceStub,
) -> None:
    metadata = stub.ModelMetadata(v2.ModelMetadataRequest(name="layers"))
    assert (metadata.name, list(metadata.versions)) == ("layers", ["1"])
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("images", "FP32", [-1, 28, 28, 1])
    ]
    outputs = {t.name: list(t.shape) for t in metadata.outputs}
    assert outputs["probabilities"] == [-1, 10]
    assert outputs["conv2d"][0] == -1 and len(outputs["conv2d"]) == 4


@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_infer_equals_predict(
    server: Any,
    stub: v2_grpc.GRPCInferenceServiceStub,
    test_images: Dataset,
    typed: bool,
    dtype: str,
) -> None:
    images = test_images.images[:32].astype(dtype)
    response = stub.ModelInfer(infer_request(images, typed=typed, id="req-7"))
    assert (response.model_name, response.model_version, response.id) == ("fashion", "1", "req-7")
    assert response.outputs[0].name == "probabilities"
    with Client(server.target) as client:
        expected = client.predict(test_images.images[:32]).probabilities
    np.testing.assert_allclose(output(response), expected, atol=1e-6)


def test_a_layer_output_is_its_feature_map(
    server: Any, stub: v2_grpc.GRPCInferenceServiceStub, test_images: Dataset
) -> None:
    images = test_images.images[:4]
    requested = [
        v2.ModelInferRequest.InferRequestedOutputTensor(name=name)
        for name in ("conv2d_1", "probabilities")
    ]
    request = infer_request(images, outputs=requested)
    request.model_name = "layers"
    response = stub.ModelInfer(request)
    assert [t.name for t in response.outputs] == ["conv2d_1", "probabilities"]
    with Client(server.target) as client:
        expected = client.feature_map(images, layer="conv2d_1", model="layers").activations
        probabilities = client.predict(images, model="layers").probabilities
    np.testing.assert_allclose(output(response, 0), expected, atol=1e-6)
    np.testing.assert_allclose(output(response, 1), probabilities, atol=1e-6)


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        (lambda r: setattr(r, "model_name", "nope"), "NOT_FOUND", "'nope' is not loaded"),
        (lambda r: setattr(r, "model_version", "7"), "NOT_FOUND", "no version 7"),
        (lambda r: setattr(r, "model_version", "v1"), "INVALID_ARGUMENT", "not a version number"),
        (
            lambda r: setattr(r.inputs[0], "name", "x"),
            "INVALID_ARGUMENT",
            "takes one input, 'images'",
        ),
        (
            lambda r: setattr(r.inputs[0], "datatype", "INT64"),
            "INVALID_ARGUMENT",
            "expected UINT8 or FP32",
        ),
        (lambda r: r.inputs[0].shape.__setitem__(0, 3), "INVALID_ARGUMENT", "needs 2352"),
        (lambda r: r.raw_input_contents.append(b""), "INVALID_ARGUMENT", "one per input"),
        (lambda r: r.outputs.add(name="dense"), "INVALID_ARGUMENT", "has no output 'dense'"),
        (
            lambda r: (r.inputs[0].ClearField("shape"), r.inputs[0].shape.extend([2, 56, 14])),
            "INVALID_ARGUMENT",
            "expected [N, 28, 28]",
        ),
    ],
    ids=[
        "model",
        "version",
        "version-text",
        "input",
        "datatype",
        "bytes",
        "raw-count",
        "output",
        "shape",
    ],
)
def test_bad_requests_get_a_status_that_says_what_was_wrong(
    stub: v2_grpc.GRPCInferenceServiceStub,
    test_images: Dataset,
    change: Any,
    code: str,
    message: str,
) -> None:
    request = infer_request(test_images.images[:2])
    change(request)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code().name == code
    assert message in caught.value.details()


def test_typed_uint8_values_must_be_pixels(
    stub: v2_grpc.GRPCInferenceServiceStub, test_images: Dataset
) -> None:
    request = infer_request(test_images.images[:1], typed=True)
    request.inputs[0].contents.uint_contents[5] = 256
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "0..255" in caught.value.details()


def test_stream_answers_each_request_in_order_and_survives_errors(
    server: Any, stub: v2_grpc.GRPCInferenceServiceStub, test_images: Dataset
) -> None:
    requests = [infer_request(test_images.images[2 * i : 2 * i + 2], id=str(i)) for i in range(3)]
    requests[1].model_name = "nope"
    responses = list(stub.ModelStreamInfer(iter(requests)))
    assert [r.infer_response.id for r in responses] == ["0", "1", "2"]
    assert [r.error_message.split(":")[0] for r in responses] == ["", "NOT_FOUND", ""]
    with Client(server.target) as client:
        expected = client.predict(test_images.images[4:6]).probabilities
    np.testing.assert_allclose(output(responses[2].infer_response), expected, atol=1e-6)


def test_a_malformed_stream_message_gets_its_error_and_the_stream_goes_on(
    server: Any, test_images: Dataset
) -> None:
    good = infer_request(test_images.images[:1], id="good").SerializeToString()
    with grpc.insecure_channel(server.target) as channel:
        stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            response_deserializer=v2.ModelStreamInferResponse.FromString,
        )
        responses = list(stream(iter([b"\x0a\xff", good])))  # a string field cut short
    assert responses[0].error_message.startswith(
        "INVALID_ARGUMENT: the request is not a valid inference.ModelInferRequest message"
    )
    assert (responses[1].error_message, responses[1].infer_response.id) == ("", "good")


def test_repository_index_lists_the_loaded_versions(
    stub: v2_grpc.GRPCInferenceServiceStub,
) -> None:
    index = stub.RepositoryIndex(v2.RepositoryIndexRequest(ready=True))
    assert [(m.name, m.version, m.state) for m in index.models] == [
        ("cam", "1", "READY"),
        ("fashion", "1", "READY"),
        ("layers", "1", "READY"),
    ]


def _png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
def test_bytes_input_carries_png_files(
    server: Any, stub: v2_grpc.GRPCInferenceServiceStub, test_images: Dataset, typed: bool
) -> None:
    """BYTES [N]: N PNG/JPEG files, decoded as Predict's files are; raw contents each with its
    4-byte little-endian length."""
    files = [_png(image) for image in test_images.images[:3]]
    tensor = v2.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES", shape=[3])
    request = v2.ModelInferRequest(model_name="fashion", inputs=[tensor])
    if typed:
        request.inputs[0].contents.bytes_contents.extend(files)
    else:
        request.raw_input_contents.append(b"".join(len(f).to_bytes(4, "little") + f for f in files))
    with Client(server.target) as client:
        expected = client.predict(test_images.images[:3]).probabilities
    np.testing.assert_allclose(output(stub.ModelInfer(request)), expected, atol=1e-6)
    request.raw_input_contents[:] = [len(files[0]).to_bytes(4, "little") + files[0][:-1]]
    del request.inputs[0].contents.bytes_contents[:]
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "element 0 says" in caught.value.details()
