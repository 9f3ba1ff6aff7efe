"""The HTTP door: the Open Inference Protocol's REST API (the real tritonclient.http, and
plain HTTP), convserve's API as Connect JSON/proto, and every bad input a 4xx with a JSON
error while the server keeps serving."""

from __future__ import annotations

import base64
import http.client
import io
import json
import socket
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image

from convserve.api.pb.convserve.v1 import convserve_pb2 as pb
from convserve.api.pb.convserve.v1 import convserve_pb2_grpc as pb_grpc
from convserve.api.pb.inference import grpc_predict_v2_pb2 as v2
from convserve.api.pb.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from convserve.fashion_mnist import Dataset
from tests.conftest import metric, serving

IMAGES = 8


def _request(
    port: int, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, dict[str, str], Any]:
    """(status, headers, the body as JSON, or bytes if it is not JSON)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        answer_headers = {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()
    if answer_headers.get("content-type", "").startswith("application/json"):
        return response.status, answer_headers, json.loads(data)
    return response.status, answer_headers, data


def _json(port: int, path: str, document: Any, **headers: str) -> tuple[int, dict[str, str], Any]:
    headers.setdefault("Content-Type", "application/json")
    return _request(port, "POST", path, json.dumps(document).encode(), **headers)


def _infer_body(images: np.ndarray, datatype: str = "UINT8", **extra: Any) -> dict[str, Any]:
    tensor = {"name": "images", "datatype": datatype, "shape": list(images.shape),
              "data": images.ravel().tolist()}  # fmt: skip
    return {"inputs": [tensor], **extra}


@pytest.fixture(scope="module")
def port(server: Any) -> int:
    return int(server.server.http_port)


@pytest.fixture(scope="module")
def images(test_images: Dataset) -> np.ndarray:
    return test_images.images[:IMAGES]


def _grpc_infer(server: Any, images: np.ndarray, outputs: list[Any]) -> dict[str, np.ndarray]:
    request = v2.ModelInferRequest(model_name="cam", outputs=outputs)
    request.inputs.add(name="images", datatype="UINT8", shape=images.shape)
    request.raw_input_contents.append(images.tobytes())
    with grpc.insecure_channel(server.target) as channel:
        answer = v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    return {
        output.name: np.frombuffer(raw, "<f4").reshape(output.shape)
        for output, raw in zip(answer.outputs, answer.raw_output_contents, strict=True)
    }


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_http_gets_what_grpc_v2_gets(
    server: Any, port: int, images: np.ndarray, binary: bool
) -> None:
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    tensor = triton.InferInput("images", list(images[..., None].shape), "UINT8")
    tensor.set_data_from_numpy(images[..., None], binary_data=binary)
    gradcam = triton.InferRequestedOutput("gradcam", binary_data=binary)
    gradcam._parameters.update(layer="conv2d", class_index=3)  # no public setter
    outputs = [
        triton.InferRequestedOutput("probabilities", binary_data=binary),
        triton.InferRequestedOutput("conv2d_1", binary_data=binary),
        gradcam,
    ]
    answer = client.infer("cam", [tensor], outputs=outputs)
    parameters = {"layer": v2.InferParameter(string_param="conv2d"),
                  "class_index": v2.InferParameter(int64_param=3)}  # fmt: skip
    expected = _grpc_infer(server, images[..., None], [
        v2.ModelInferRequest.InferRequestedOutputTensor(name="probabilities"),
        v2.ModelInferRequest.InferRequestedOutputTensor(name="conv2d_1"),
        v2.ModelInferRequest.InferRequestedOutputTensor(name="gradcam", parameters=parameters),
    ])  # fmt: skip
    for name, array in expected.items():
        assert answer.as_numpy(name).shape == array.shape
        np.testing.assert_allclose(answer.as_numpy(name), array, atol=1e-6)
    assert answer.get_response()["model_name"] == "cam"


def test_tritonclient_http_health_metadata_files_and_repository(port: int, images: np.ndarray):
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("fashion") and not client.is_model_ready("no-such-model")
    assert client.get_server_metadata()["extensions"] == ["model_repository"]
    metadata = client.get_model_metadata("fashion", "1")
    assert metadata["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 28, 28, 1]}]
    # PNG files as BYTES (binary data) are classified as their pixels are.
    files = []
    for image in images[:3]:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        files.append(buffer.getvalue())
    tensor = triton.InferInput("images", [3], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=np.object_), binary_data=True)
    by_file = client.infer("fashion", [tensor]).as_numpy("probabilities")
    pixels = triton.InferInput("images", [3, 28, 28], "UINT8")
    pixels.set_data_from_numpy(images[:3])
    by_pixels = client.infer("fashion", [pixels]).as_numpy("probabilities")
    np.testing.assert_allclose(by_file, by_pixels, atol=1e-6)
    index = client.get_model_repository_index()
    assert {(m["name"], m["state"]) for m in index} >= {("fashion", "READY"), ("cam", "READY")}


def test_repository_load_and_unload_over_rest(port: int) -> None:
    assert _request(port, "POST", "/v2/repository/models/layers/unload")[0] == 200
    assert _request(port, "GET", "/v2/models/layers/ready")[:3:2] == (
        400,
        {"name": "layers", "ready": False},
    )
    status, _, body = _json(port, "/v2/repository/index", {"ready": True})
    assert status == 200 and "layers" not in {entry["name"] for entry in body}
    assert _request(port, "POST", "/v2/repository/models/layers/load")[0] == 200
    assert _request(port, "GET", "/v2/models/layers/versions/1/ready")[0] == 200


def test_json_routes_answer_as_the_protocol_says(port: int, images: np.ndarray) -> None:
    assert _request(port, "GET", "/v2/health/live")[::2] == (200, {"live": True})
    assert _request(port, "GET", "/v2/health/ready")[::2] == (200, {"ready": True})
    status, _, body = _request(port, "GET", "/v2")
    assert status == 200 and body["name"] == "convserve"
    status, headers, body = _json(port, "/v2/models/fashion/infer", _infer_body(images, id="7"))
    assert status == 200 and headers["content-type"] == "application/json"
    assert body["id"] == "7" and body["model_version"] == "1"
    (output,) = body["outputs"]
    assert output["shape"] == [IMAGES, 10] and len(output["data"]) == IMAGES * 10
    assert np.allclose(np.reshape(output["data"], (IMAGES, 10)).sum(axis=1), 1, atol=1e-5)


def test_connect_json_and_proto_answer_as_grpc_does(
    server: Any, port: int, images: np.ndarray
) -> None:
    request = pb.PredictRequest(
        model=pb.ModelSpec(name="fashion"),
        images=pb.Images(tensor=pb.Tensor(dtype=pb.DATA_TYPE_UINT8, shape=images.shape,
                                          content=images.tobytes())),
        top_k=2,
    )  # fmt: skip
    with grpc.insecure_channel(server.target) as channel:
        expected = pb_grpc.ConvServeStub(channel).Predict(request, timeout=60)
    status, headers, body = _request(
        port, "POST", "/convserve.v1.ConvServe/Predict", request.SerializeToString(),
        **{"Content-Type": "application/proto"},
    )  # fmt: skip
    assert status == 200 and headers["content-type"] == "application/proto"
    assert pb.PredictResponse.FromString(body) == expected
    document = {"model": {"name": "fashion"}, "topK": 2, "images": {"tensor": {
        "dtype": "DATA_TYPE_UINT8", "shape": list(images.shape),
        "content": base64.b64encode(images.tobytes()).decode()}}}  # fmt: skip
    status, _, body = _json(port, "/convserve.v1.ConvServe/Predict", document)
    assert status == 200
    assert [p["top"][0]["name"] for p in body["predictions"]] == [
        p.top[0].name for p in expected.predictions
    ]
    status, _, body = _json(port, "/convserve.v1.ConvServe/ListModels", {})
    assert {m["name"] for m in body["models"]} >= {"fashion", "cam", "layers"}
    status, _, body = _json(port, "/inference.GRPCInferenceService/ModelReady", {"name": "fashion"})
    assert (status, body) == (200, {"ready": True})


def test_request_ids_and_metrics_name_the_protocol(server: Any, port: int) -> None:
    before = server.scrape()
    status, headers, _ = _request(port, "GET", "/v2/models/fashion", **{"x-request-id": "web-1"})
    assert status == 200 and headers["x-request-id"] == "web-1"
    status, headers, _ = _request(port, "GET", "/v2/models/nope")
    assert status == 404 and len(headers["x-request-id"]) == 32
    after = server.scrape()
    labels = {"method": "ModelMetadata", "protocol": "http"}
    for code in ("OK", "NOT_FOUND"):
        count = metric(after, "convserve_requests_total", code=code, **labels)
        assert count - metric(before, "convserve_requests_total", code=code, **labels) == 1


# -- bad input: a 4xx and a JSON error saying what was wrong, and the server keeps serving ---

ONE = np.zeros((1, 28, 28), np.uint8)
INFER = "/v2/models/fashion/infer"
PREDICT = "/convserve.v1.ConvServe/Predict"


def _binary(document: dict[str, Any], blob: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(document).encode()
    return head + blob, {"Inference-Header-Content-Length": str(len(head))}


def _case(name: str, path: str, body: bytes, headers: dict[str, str], status: int, says: str):
    return pytest.param(path, body, headers, status, says, id=name)


def _doc(**tensor: Any) -> bytes:
    base = {"name": "images", "datatype": "UINT8", "shape": [1, 784], "data": [0] * 784}
    return json.dumps({"inputs": [{**base, **tensor}]}).encode()


JSON = {"Content-Type": "application/json"}
BAD = [
    _case("not-json", INFER, b"{inputs:", JSON, 400, "not JSON"),
    _case("no-inputs", INFER, b"{}", JSON, 400, '"inputs"'),
    _case("wrong-shape", INFER, _doc(shape=[1, 27, 29], data=[0] * 783), JSON, 400, "shape"),
    _case("wrong-datatype", INFER, _doc(datatype="INT64"), JSON, 400, "UINT8 or FP32 or BYTES"),
    _case("short-data", INFER, _doc(data=[0] * 783), JSON, 400, "783 values"),
    _case("long-data", INFER, _doc(data=[0] * 785), JSON, 400, "785 values"),
    _case("not-numbers", INFER, _doc(data=["a"] * 784), JSON, 400, "expected numbers"),
    _case("out-of-range", INFER, _doc(data=[300] * 784), JSON, 400, "0..255"),
    _case("not-an-image", INFER, _doc(datatype="BYTES", shape=[1], data=["aGVsbG8="]), JSON, 400,
          "image 0"),
    _case("not-base64", INFER, _doc(datatype="BYTES", shape=[1], data=["%%"]), JSON, 400,
          "base64"),
    _case("too-many-images", INFER, _doc(datatype="BYTES", shape=[5000], data=["aGk="] * 5000),
          JSON, 413, "at most"),
    _case("unknown-model", "/v2/models/nope/infer", _doc(), JSON, 404, "not loaded"),
    _case("bad-version", "/v2/models/fashion/versions/x/infer", _doc(), JSON, 400,
          "version number"),
    _case("bad-parameter", INFER, json.dumps({"inputs": json.loads(_doc())["inputs"],
          "outputs": [{"name": "gradcam", "parameters": {"layer": [1]}}]}).encode(), JSON, 400,
          "expected a string"),
    _case("connect-media-type", PREDICT, b"{}", {"Content-Type": "text/plain"}, 415,
          "application/json"),
    _case("connect-bad-json", PREDICT, b'{"topK": "many"}', JSON, 400, "PredictRequest"),
    _case("connect-no-images", PREDICT, b"{}", JSON, 400, "no images"),
    _case("connect-bad-proto", PREDICT, b"\xff\xff\xff", {"Content-Type": "application/proto"},
          400, "PredictRequest"),
    _case("bad-timeout", PREDICT, b"{}", {**JSON, "Connect-Timeout-Ms": "soon"}, 400,
          "milliseconds"),
    _case("past-deadline", PREDICT, b"{}", {**JSON, "Connect-Timeout-Ms": "0"}, 504,
          "deadline"),
]  # fmt: skip
BAD.append(_case("binary-size-over", INFER, *_binary(json.loads(_doc()) | {"inputs": [
    {"name": "images", "datatype": "UINT8", "shape": [1, 784],
     "parameters": {"binary_data_size": 785}}]}, bytes(784)), 400, "785"))  # fmt: skip
BAD.append(_case("binary-left-over", INFER, *_binary({"inputs": [
    {"name": "images", "datatype": "UINT8", "shape": [1, 784],
     "parameters": {"binary_data_size": 784}}]}, bytes(790)), 400, "left"))  # fmt: skip
BAD.append(_case("bad-header-length", INFER, _doc(), {"Inference-Header-Content-Length": "x"},
                 400, "Inference-Header-Content-Length"))  # fmt: skip


@pytest.mark.parametrize(("path", "body", "headers", "status", "says"), BAD)
def test_bad_input_gets_a_4xx_and_a_json_error(
    port: int, path: str, body: bytes, headers: dict[str, str], status: int, says: str
) -> None:
    answer, answer_headers, error = _request(port, "POST", path, body, **headers)
    assert answer == status, error
    assert answer_headers["content-type"] == "application/json"
    message = error["message"] if path.startswith("/convserve") else error["error"]
    assert says in message, message
    if path.startswith("/convserve"):
        assert error["code"] == {400: "invalid_argument", 415: "invalid_argument",
                                 504: "deadline_exceeded"}[status]  # fmt: skip
    assert _request(port, "GET", "/v2/health/ready")[0] == 200  # still serving


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nothing", 404), ("GET", INFER, 405), ("DELETE", "/v2/health/live", 405),
     ("POST", "/convserve.v1.ConvServe/Nothing", 404)],
)  # fmt: skip
def test_unknown_routes_and_methods_are_json(port: int, method: str, path: str, status: int):
    answer, headers, error = _request(port, method, path)
    assert answer == status and headers["content-type"] == "application/json"
    assert path in (error.get("error") or error["message"])


def _raw_http(port: int, data: bytes, close_after: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        if close_after:
            return b""
        return sock.recv(65536)


def test_a_body_over_the_limit_is_refused_from_its_content_length(models_dir: Path) -> None:
    from service.settings import Settings

    settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, models_dir=models_dir,
                        default_model="fashion", max_message_bytes=4096)  # fmt: skip
    with serving(settings) as running:
        port = running.server.http_port
        head = (f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Content-Length: 100000000\r\n\r\n").encode()  # fmt: skip
        answer = _raw_http(port, head)  # no body sent: refused before it is read
        assert answer.startswith(b"HTTP/1.1 413 ") and b"at most 4096" in answer
        status, _, error = _json(port, INFER, _infer_body(np.zeros((8, 28, 28), np.uint8)))
        assert status == 413 and "4096" in error["error"]


def test_slow_and_truncated_bodies_lose_nothing(port: int) -> None:
    head = (f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Connect-Timeout-Ms: 300\r\nContent-Length: 1000\r\n\r\n{").encode()  # fmt: skip
    answer = _raw_http(port, head)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"did not arrive" in answer
    truncated = (f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{").encode()
    _raw_http(port, truncated, close_after=True)
    status, _, body = _json(port, INFER, _infer_body(ONE))
    assert status == 200 and body["outputs"][0]["shape"] == [1, 10]


def test_tokens_and_scopes_over_http(models_dir: Path) -> None:
    from service.settings import Settings

    admin, user = "a" * 20, "u" * 20
    settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, models_dir=models_dir,
                        default_model="fashion",
                        auth_tokens=f"{admin}:admin {user}:inference")  # fmt: skip
    with serving(settings) as running:
        port = running.server.http_port
        assert _request(port, "GET", "/v2/health/ready")[0] == 200  # probes need none
        status, _, error = _json(port, INFER, _infer_body(ONE))
        assert status == 401 and "bearer token" in error["error"]
        wrong = {"Authorization": "Bearer " + "x" * 20}
        assert _json(port, INFER, _infer_body(ONE), **wrong)[0] == 401
        bearer = {"Authorization": f"Bearer {user}"}
        assert _json(port, INFER, _infer_body(ONE), **bearer)[0] == 200
        status, _, error = _request(port, "POST", "/v2/repository/models/cam/unload", **bearer)
        assert status == 403 and "scope admin" in error["error"]
        status, _, error = _json(port, PREDICT, {}, **bearer)
        assert status == 400 and error["code"] == "invalid_argument"  # past the token check
        admin_bearer = {"Authorization": f"Bearer {admin}"}
        assert _request(port, "POST", "/v2/repository/models/cam/unload", **admin_bearer)[0] == 200
        assert _request(port, "POST", "/v2/repository/models/cam/load", **admin_bearer)[0] == 200
