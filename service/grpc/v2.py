"""inference.GRPCInferenceService (the Open Inference Protocol, KServe V2) over the `Engine`.

A model has one input (its metadata's input name, UINT8 or FP32 pixels 0..255 of the model's
input shape: [N, H, W, C], [N, H*W*C], or [N, H, W] for one channel; or BYTES [N], N PNG or
JPEG files, decoded and resized as Predict's files are) sent as `raw_input_contents` or typed
`contents`.
Its outputs: the probabilities (the default); every layer with a 4-D output by name, which
returns that layer's feature maps (FeatureMap through V2); and `gradcam`, `hirescam` and
`occlusion`, the heatmaps [N, H, W] of Explain's methods, whose requested output takes the
parameters `layer` (string, not for occlusion) and `class_index` (int64). Outputs come back
as little-endian bytes in `raw_output_contents`.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Awaitable, Callable

import grpc

from convserve.api.codec import EXPLAIN_METHODS, from_infer_input
from convserve.api.pb.inference import grpc_predict_v2_pb2 as v2
from convserve.api.pb.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from service.boundary import Boundary, CallContext, Malformed
from service.errors import InvalidInput, NotFound, Unavailable
from service.grpc.engine import Engine, Images
from service.model import Explanation, Model

__all__ = ["SERVICE", "SERVICE_NAME", "InferenceServicer", "add_to_server"]

SERVICE = v2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICE_NAME = SERVICE.full_name


class InferenceServicer(v2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        engine: Engine,
        control: Callable[[str, str, float | None], Awaitable[None]],
        ready: Callable[[], bool],
    ) -> None:
        """`control(action, name, timeout)`: `Server.control`, load/unload in every worker;
        `ready()`: whether the server takes calls (`Server.ready`)."""
        self.engine = engine
        self._repository = engine.repository
        self._control = control
        self._ready = ready

    async def ServerLive(
        self, request: v2.ServerLiveRequest, context: CallContext
    ) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: v2.ServerReadyRequest, context: CallContext
    ) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=self._ready())

    async def ModelReady(
        self, request: v2.ModelReadyRequest, context: CallContext
    ) -> v2.ModelReadyResponse:
        version = _version(request.version)
        try:
            self.engine.model(request.name, version)
        except (NotFound, Unavailable):
            return v2.ModelReadyResponse(ready=False)
        return v2.ModelReadyResponse(ready=True)

    async def ServerMetadata(
        self, request: v2.ServerMetadataRequest, context: CallContext
    ) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(
            name="convserve",
            version=importlib.metadata.version("convserve"),
            extensions=["model_repository"],
        )

    async def ModelMetadata(
        self, request: v2.ModelMetadataRequest, context: CallContext
    ) -> v2.ModelMetadataResponse:
        model = self.engine.model(request.name, _version(request.version))
        tensor = v2.ModelMetadataResponse.TensorMetadata
        return v2.ModelMetadataResponse(
            name=model.name,
            versions=[str(v) for v in self._repository.versions(model.name)],
            platform="onnxruntime_onnx",
            inputs=[tensor(name=model.input_name, datatype="FP32", shape=[-1, *model.input_shape])],
            outputs=[
                tensor(name=model.output_name, datatype="FP32", shape=[-1, len(model.class_names)]),
                *(
                    tensor(name=name, datatype="FP32", shape=[-1, *model.input_shape[:2]])
                    for name in model.explain_methods
                ),
                *(
                    tensor(
                        name=layer,
                        datatype="FP32",
                        shape=[-1, *model.layers[layer].output_shape],
                    )
                    for layer in model.feature_layers
                ),
            ],
        )

    async def ModelInfer(
        self, request: v2.ModelInferRequest, context: CallContext
    ) -> v2.ModelInferResponse:
        return await self._infer(request)

    async def ModelStreamInfer(
        self, request: v2.ModelInferRequest, context: CallContext
    ) -> v2.ModelStreamInferResponse:
        """One message of the stream; every message is answered, in order. A failed one gets
        its `error_message` (the status name in front, e.g. "NOT_FOUND: ...", see
        `_stream_error`) and the stream goes on."""
        return v2.ModelStreamInferResponse(infer_response=await self._infer(request))

    async def RepositoryIndex(
        self, request: v2.RepositoryIndexRequest, context: CallContext
    ) -> v2.RepositoryIndexResponse:
        index = v2.RepositoryIndexResponse.ModelIndex
        return v2.RepositoryIndexResponse(
            models=[
                index(
                    name=entry.name,
                    version=str(entry.version),
                    state=entry.state,
                    reason=entry.reason,
                )
                for entry in self._repository.index()
                if entry.state == "READY" or not request.ready
            ]
        )

    async def RepositoryModelLoad(
        self, request: v2.RepositoryModelLoadRequest, context: CallContext
    ) -> v2.RepositoryModelLoadResponse:
        """(Re)load a model's versions from the directory now, as its version policy says."""
        name = _model_name(request.model_name)
        await self._control("load", name, context.time_remaining())
        return v2.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: v2.RepositoryModelUnloadRequest, context: CallContext
    ) -> v2.RepositoryModelUnloadResponse:
        """Stop serving a model (in-flight requests finish) until it is loaded again."""
        name = _model_name(request.model_name)
        await self._control("unload", name, context.time_remaining())
        return v2.RepositoryModelUnloadResponse()

    async def _infer(self, request: v2.ModelInferRequest) -> v2.ModelInferResponse:
        model = self.engine.model(request.model_name, _version(request.model_version))
        outputs = list(request.outputs) or [v2.ModelInferRequest.InferRequestedOutputTensor()]
        names = (model.output_name, *model.explain_methods, *model.feature_layers)
        for output in outputs:
            if output.name and output.name not in names:
                raise InvalidInput(
                    f"model {model.name!r} has no output {output.name!r}; outputs: "
                    f"{', '.join(names)}"
                )
        explanations = {
            o.name: _explanation(o, model) for o in outputs if o.name in EXPLAIN_METHODS
        }
        pixels = await self.engine.pixels(model, _input(request, model))
        response = v2.ModelInferResponse(
            model_name=model.name, model_version=str(model.version), id=request.id
        )
        for output in outputs:
            name = output.name or model.output_name
            if name == model.output_name:
                array = await self.engine.predict(model, pixels)
            elif name in explanations:  # Explain's heatmaps, an output per method
                array, _, _ = await self.engine.explain(model, pixels, explanations[name])
            else:
                array, _ = await self.engine.feature_map(model, name, pixels)
            response.outputs.add(name=name, datatype="FP32", shape=array.shape)
            response.raw_output_contents.append(array.astype("<f4", copy=False).tobytes())
        return response


def add_to_server(servicer: InferenceServicer, server: grpc.aio.Server, boundary: Boundary) -> None:
    boundary.add_service(
        servicer,
        SERVICE,
        server,
        stream_errors={"ModelStreamInfer": _stream_error},
    )


def _explanation(
    output: v2.ModelInferRequest.InferRequestedOutputTensor, model: Model
) -> Explanation:
    """An explanation output (named by its method) with its parameters `layer` and
    `class_index`."""
    expected = {"layer": "string_param", "class_index": "int64_param"}
    for key, value in output.parameters.items():
        if expected.get(key) != value.WhichOneof("parameter_choice"):
            raise InvalidInput(
                f"output {output.name!r}: parameter {key!r} "
                f"({value.WhichOneof('parameter_choice') or 'empty'}) is not one it takes; "
                "expected layer (string_param) and class_index (int64_param)"
            )
    parameters = output.parameters
    layer = parameters["layer"].string_param if "layer" in parameters else ""
    class_index = parameters["class_index"].int64_param if "class_index" in parameters else None
    return model.explanation(output.name, layer, class_index)


def _model_name(name: str) -> str:
    if not name or "/" in name or name.startswith(".") or len(name.encode()) > 255:
        raise InvalidInput(f"model name {name!r}: expected a directory name in the repository")
    return name


def _version(text: str) -> int:
    """ "" → 0 (the latest); "3" → 3."""
    if not text:
        return 0
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise InvalidInput(
            f"model version {text[:40]!r} is not a version number; expected e.g. '1'"
        )
    return int(text)


def _input(request: v2.ModelInferRequest, model: Model) -> Images:
    """The request's one input tensor, through the codec: raw bytes or typed contents; pixels,
    or (BYTES) PNG/JPEG files."""
    if len(request.inputs) != 1 or request.inputs[0].name != model.input_name:
        given = ", ".join(repr(tensor.name) for tensor in request.inputs) or "none"
        raise InvalidInput(
            f"model {model.name!r} takes one input, {model.input_name!r}; the request has {given}"
        )
    raw = request.raw_input_contents
    if len(raw) > 1:
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries; expected one per input (1)")
    return from_infer_input(request.inputs[0], raw[0] if raw else None)


def _stream_error(
    request: v2.ModelInferRequest | Malformed, message: str
) -> v2.ModelStreamInferResponse:
    if isinstance(request, Malformed):
        return v2.ModelStreamInferResponse(error_message=message)
    return v2.ModelStreamInferResponse(
        error_message=message,
        infer_response=v2.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ),
    )
