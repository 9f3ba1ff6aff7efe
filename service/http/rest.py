"""The Open Inference Protocol's REST API (KServe V2, as KServe's `required_api` and Triton
document it) over the V2 servicer: JSON (and the binary tensor extension) ⇄ its gRPC messages.

    GET  /v2/health/live, /v2/health/ready       200 when true, 400 when not (no token needed)
    GET  /v2                                      server metadata
    GET  /v2/models/M[/versions/V]                model metadata
    GET  /v2/models/M[/versions/V]/ready          200 when ready, 400 when not
    POST /v2/models/M[/versions/V]/infer          inference
    POST /v2/repository/index                     every version and its state
    POST /v2/repository/models/M/load | unload    (a token of scope admin, with tokens)

An input's data is a flat or nested list of numbers, or for BYTES (PNG/JPEG files) a list of
base64 strings; with the binary extension (`Inference-Header-Content-Length`), an input's
`parameters.binary_data_size` bytes follow the JSON, in input order (BYTES elements each with
a 4-byte little-endian length, as over gRPC). An output's `parameters.binary_data` (or the
request's `parameters.binary_data_output`) sends it as bytes after the JSON; its other
parameters (`layer`, `class_index`) go to the servicer as gRPC's do. Errors: {"error": TEXT}.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from aiohttp import web

from convserve.api.codec import INFERENCE_DATATYPES, from_values
from convserve.api.pb.inference import grpc_predict_v2_pb2 as v2
from service.errors import InvalidInput
from service.grpc.v2 import SERVICE_NAME, InferenceServicer
from service.http.door import Door, HttpContext, Route, json_response

__all__ = ["add_routes"]

INFERENCE_HEADER = "Inference-Header-Content-Length"

Handler = Callable[[web.Request, HttpContext], Awaitable[web.Response]]


def add_routes(door: Door, servicer: InferenceServicer) -> None:
    rest = _Rest(door, servicer)

    def add(http_method: str, path: str, method: str, handler: Handler, open: bool = False) -> None:
        door.add(http_method, path, Route(f"/{SERVICE_NAME}/{method}", handler, _error, open=open))

    add("GET", "/v2/health/live", "ServerLive", rest.live, open=True)
    add("GET", "/v2/health/ready", "ServerReady", rest.ready, open=True)
    add("GET", "/v2", "ServerMetadata", rest.server_metadata)
    for model in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        add("GET", model, "ModelMetadata", rest.model_metadata)
        add("GET", model + "/ready", "ModelReady", rest.model_ready)
        add("POST", model + "/infer", "ModelInfer", rest.infer)
    add("POST", "/v2/repository/index", "RepositoryIndex", rest.index)
    add("POST", "/v2/repository/models/{model}/load", "RepositoryModelLoad", rest.load)
    add("POST", "/v2/repository/models/{model}/unload", "RepositoryModelUnload", rest.unload)


def _error(status: int, code: grpc.StatusCode, message: str) -> web.Response:
    return json_response({"error": message}, status)


class _Rest:
    def __init__(self, door: Door, servicer: InferenceServicer) -> None:
        self._door = door
        self._servicer = servicer

    async def live(self, request: web.Request, context: HttpContext) -> web.Response:
        live = (await self._servicer.ServerLive(v2.ServerLiveRequest(), context)).live
        return json_response({"live": live}, 200 if live else 400)

    async def ready(self, request: web.Request, context: HttpContext) -> web.Response:
        ready = (await self._servicer.ServerReady(v2.ServerReadyRequest(), context)).ready
        return json_response({"ready": ready}, 200 if ready else 400)

    async def server_metadata(self, request: web.Request, context: HttpContext) -> web.Response:
        answer = await self._servicer.ServerMetadata(v2.ServerMetadataRequest(), context)
        return json_response(
            {"name": answer.name, "version": answer.version, "extensions": list(answer.extensions)}
        )

    async def model_metadata(self, request: web.Request, context: HttpContext) -> web.Response:
        name, version = _model(request)
        answer = await self._servicer.ModelMetadata(
            v2.ModelMetadataRequest(name=name, version=version), context
        )
        return json_response(
            {
                "name": answer.name,
                "versions": list(answer.versions),
                "platform": answer.platform,
                "inputs": [_tensor_metadata(tensor) for tensor in answer.inputs],
                "outputs": [_tensor_metadata(tensor) for tensor in answer.outputs],
            }
        )

    async def model_ready(self, request: web.Request, context: HttpContext) -> web.Response:
        name, version = _model(request)
        answer = await self._servicer.ModelReady(
            v2.ModelReadyRequest(name=name, version=version), context
        )
        return json_response({"name": name, "ready": answer.ready}, 200 if answer.ready else 400)

    async def infer(self, request: web.Request, context: HttpContext) -> web.Response:
        body = await self._door.body(request, context)
        name, version = _model(request)
        message, binary = _infer_request(body, request.headers.get(INFERENCE_HEADER), name, version)
        return _infer_response(await self._servicer.ModelInfer(message, context), binary)

    async def index(self, request: web.Request, context: HttpContext) -> web.Response:
        document = _json_object(await self._door.body(request, context), "the request", empty=True)
        ready = document.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidInput(f'"ready" is {ready!r}; expected true or false')
        answer = await self._servicer.RepositoryIndex(
            v2.RepositoryIndexRequest(ready=ready), context
        )
        return json_response(
            [
                {"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}
                for m in answer.models
            ]
        )

    async def load(self, request: web.Request, context: HttpContext) -> web.Response:
        await self._door.body(request, context)  # its parameters, if any, change nothing
        name, _ = _model(request)
        await self._servicer.RepositoryModelLoad(
            v2.RepositoryModelLoadRequest(model_name=name), context
        )
        return json_response({})

    async def unload(self, request: web.Request, context: HttpContext) -> web.Response:
        await self._door.body(request, context)
        name, _ = _model(request)
        await self._servicer.RepositoryModelUnload(
            v2.RepositoryModelUnloadRequest(model_name=name), context
        )
        return json_response({})


def _model(request: web.Request) -> tuple[str, str]:
    info = request.match_info
    return _text(info["model"], "the model name"), _text(info.get("version", ""), "the version")


def _tensor_metadata(tensor: v2.ModelMetadataResponse.TensorMetadata) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}


def _json_object(body: bytes, what: str, empty: bool = False) -> dict[str, Any]:
    if empty and not body.strip():
        return {}
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{what} is not JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput(f"{what} nests its JSON too deep") from None
    if not isinstance(document, dict):
        raise InvalidInput(f"{what} is {type(document).__name__} JSON; expected an object")
    return document


def _infer_request(
    body: bytes, header_length: str | None, name: str, version: str
) -> tuple[v2.ModelInferRequest, bool | set[str]]:
    """The inference request's JSON (and binary data) as the gRPC message, and which outputs
    go back as binary data (True: all)."""
    split = len(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InvalidInput(
                f"{INFERENCE_HEADER} {header_length[:20]!r}: expected the JSON's length in "
                f"bytes, at most the body's {len(body)}"
            )
        split = int(header_length)
    document = _json_object(body[:split], "the inference request")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput('the inference request has no "inputs": expected a list of tensors')
    message = v2.ModelInferRequest(
        model_name=name, model_version=version, id=_text(document.get("id", ""), "id")
    )
    offset = split
    for number, item in enumerate(inputs):
        tensor = _object(item, f"inputs[{number}]")
        input_name = _text(tensor.get("name"), f"inputs[{number}].name")
        datatype = _text(tensor.get("datatype"), f"inputs[{number}].datatype")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**63 for d in shape
        ):
            raise InvalidInput(f"inputs[{number}].shape is {shape!r}; expected a list of sizes")
        message.inputs.add(name=input_name, datatype=datatype, shape=shape)
        what = f"input {input_name!r}"
        size = _object(tensor.get("parameters", {}), f"{what} parameters").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"{what}: binary_data_size {size!r}; expected bytes, >= 0")
            if offset + size > len(body):
                raise InvalidInput(
                    f"{what}: binary_data_size {size}, but {len(body) - offset} bytes of binary "
                    "data are left"
                )
            message.raw_input_contents.append(body[offset : offset + size])
            offset += size
        elif "data" in tensor:
            message.raw_input_contents.append(_raw(tensor["data"], datatype, shape, what))
        else:
            raise InvalidInput(f"{what} has neither data nor parameters.binary_data_size")
    if offset != len(body):
        raise InvalidInput(
            f"{len(body) - offset} bytes of binary data are left after the inputs' "
            "binary_data_size; expected none"
        )
    parameters = _object(document.get("parameters", {}), "the request's parameters")
    binary: bool | set[str] = parameters.get("binary_data_output") is True or set()
    outputs = document.get("outputs", [])
    if not isinstance(outputs, list):
        raise InvalidInput(f'"outputs" is {outputs!r:.60}; expected a list of outputs')
    for number, item in enumerate(outputs):
        output = _object(item, f"outputs[{number}]")
        requested = message.outputs.add(name=_text(output.get("name"), f"outputs[{number}].name"))
        for key, value in _object(output.get("parameters", {}), f"outputs[{number}]").items():
            if key == "binary_data":
                if value is True and isinstance(binary, set):
                    binary.add(requested.name)
                continue
            what = f"output {requested.name!r} parameter"
            _parameter(requested.parameters[_text(key, what)], value, f"{what} {key!r}")
    return message, binary


def _parameter(parameter: v2.InferParameter, value: Any, what: str) -> None:
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise InvalidInput(f"{what} is {value}; expected a 64-bit integer")
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    elif isinstance(value, str):
        parameter.string_param = _text(value, what)
    else:
        raise InvalidInput(f"{what} is {value!r}; expected a string, number or boolean")


def _raw(data: Any, datatype: str, shape: list[int], what: str) -> bytes:
    """An input's JSON data as the bytes raw_input_contents would carry."""
    if datatype == "BYTES":
        items = data if isinstance(data, list) else [data]
        files = []
        for index, item in enumerate(items):
            try:
                files.append(base64.b64decode(item, validate=True))
            except (binascii.Error, TypeError, ValueError):
                raise InvalidInput(
                    f"{what} data[{index}]: expected a file's bytes in base64 (or send them "
                    "as binary data)"
                ) from None
        return b"".join(len(f).to_bytes(4, "little") + f for f in files)
    if datatype not in INFERENCE_DATATYPES:
        return b""  # the servicer names the datatypes it takes
    dtype, _ = INFERENCE_DATATYPES[datatype]
    if datatype == "UINT8" and isinstance(data, list):  # a flat list of pixels: 7x faster
        try:
            raw = bytes(data)
        except (TypeError, ValueError):  # nested, not integers, or not 0..255: said below
            pass
        else:
            if len(raw) == math.prod(shape):
                return raw
    try:
        values = np.asarray(data, dtype=np.float64).ravel()
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"{what} data: expected numbers, as a flat or nested list") from None
    return from_values(values, dtype, shape, f"{what} data").tobytes()  # type: ignore[arg-type]


def _infer_response(response: v2.ModelInferResponse, binary: bool | set[str]) -> web.Response:
    outputs, blobs = [], []
    for output, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.shape),
        }
        if binary is True or (isinstance(binary, set) and output.name in binary):
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = np.frombuffer(raw, "<f4").tolist()
        outputs.append(entry)
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id:
        document["id"] = response.id
    head = json.dumps(document, separators=(",", ":")).encode()
    if not blobs:
        return web.Response(body=head, content_type="application/json")
    answer = web.Response(body=head + b"".join(blobs), content_type="application/octet-stream")
    answer.headers[INFERENCE_HEADER] = str(len(head))
    return answer


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} is {value!r:.60}; expected a JSON object")
    return value


def _text(value: Any, what: str) -> str:
    """A JSON string that protobuf can hold: UTF-8 (JSON's \\ud800 escapes are not)."""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} is {value!r:.60}; expected a string")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidInput(
            f"{what} {value!r:.60} is not valid Unicode (a lone surrogate)"
        ) from None
    return value
