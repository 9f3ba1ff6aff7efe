"""`Client` and `AsyncClient`: one channel each, one shared request building and parsing."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import numpy as np

from client.errors import from_rpc_error
from convserve.api.codec import (
    EXPLAIN_METHODS,
    METHOD_NAMES,
    from_layer_message,
    from_tensor,
    to_tensor,
)
from convserve.api.pb.convserve.v1 import convserve_pb2 as pb
from convserve.api.pb.convserve.v1 import convserve_pb2_grpc as pb_grpc
from convserve.artifact import Layer

__all__ = [
    "AsyncClient",
    "ClassScore",
    "Client",
    "ExplainResult",
    "FeatureMapResult",
    "FiltersResult",
    "Images",
    "Layer",
    "ModelInfo",
    "ModelSummary",
    "PredictResult",
    "channel_credentials",
    "feature_map_request",
    "open_channel",
    "predict_request",
    "read_pem",
]

# A batch of pixels 0..255 ([N, 28, 28], [N, 28, 28, 1] or [N, 784]; uint8, float or int),
# or encoded PNG/JPEG files as bytes or paths.
Images = np.ndarray | Sequence[bytes | str | os.PathLike[str]]

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_SERVICE = "convserve.v1.ConvServe"
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_REPOSITORY = "/inference.GRPCInferenceService/"
_HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


@dataclass(frozen=True)
class ClassScore:
    index: int
    name: str
    score: float


@dataclass(frozen=True)
class PredictResult:
    """probabilities float32 [N, classes]; labels int [N], the most probable class of each image."""

    probabilities: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    top: list[list[ClassScore]]
    model: str
    version: int

    @property
    def label_names(self) -> list[str]:
        return [self.class_names[label] for label in self.labels]


@dataclass(frozen=True)
class FeatureMapResult:
    """activations float32 [N, H, W, C]; pre_activations the same shape, when asked for;
    images uint8 [N, H, W, C], the pixels the model took, when asked for."""

    activations: np.ndarray
    pre_activations: np.ndarray | None
    layer: Layer
    model: str
    version: int
    images: np.ndarray | None = None


@dataclass(frozen=True)
class ExplainResult:
    """heatmaps float32 [N, H, W] (>= 0, unnormalised); classes int [N], the class each
    explains; probabilities float32 [N, classes]."""

    heatmaps: np.ndarray
    classes: np.ndarray
    probabilities: np.ndarray
    class_names: tuple[str, ...]
    layer: Layer | None  # None for occlusion, which has no layer
    model: str
    version: int
    method: str = ""  # the method that made the heatmaps: gradcam, hirescam or occlusion


@dataclass(frozen=True)
class FiltersResult:
    """kernels float32 [KH, KW, C_in, C_out]; biases float32 [C_out] or None."""

    kernels: np.ndarray
    biases: np.ndarray | None
    layer: Layer
    model: str
    version: int


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: int
    versions: tuple[int, ...]
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    preprocessing_scale: float
    preprocessing_offset: float
    layers: tuple[Layer, ...]
    parameters: int
    test_accuracy: float
    test_loss: float
    created_at: str
    metadata: dict[str, Any]
    origin: str = ""  # "trained by convserve on DIR" or "imported from FILE (…)"


@dataclass(frozen=True)
class ModelSummary:
    name: str
    versions: tuple[int, ...]
    latest_version: int
    is_default: bool
    class_names: tuple[str, ...]
    origin: str = ""


def _channel_options(max_message_bytes: int, retries: int) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.enable_retries", 1 if retries > 0 else 0),
    ]
    if retries > 0:  # gRPC rejects a whole service config whose maxAttempts is below 2
        # Retries of UNAVAILABLE (a replica restarting, a connection reset) by gRPC itself.
        retry_policy = {
            "maxAttempts": retries + 1,
            "initialBackoff": "0.05s",
            "maxBackoff": "1s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
        services = [{"service": _SERVICE}, {"service": "grpc.health.v1.Health"}]
        config = {"methodConfig": [{"name": services, "retryPolicy": retry_policy}]}
        options.append(("grpc.service_config", json.dumps(config)))
    return options


def _images_message(images: Images) -> pb.Images:
    if isinstance(images, np.ndarray):
        array = images
        if array.dtype not in (np.uint8, np.float32):
            if np.issubdtype(array.dtype, np.integer):
                if array.size and (array.min() < 0 or array.max() > 255):
                    raise ValueError(
                        f"integer pixels must be 0..255, got {array.min()}..{array.max()}"
                    )
                array = array.astype(np.uint8)
            elif np.issubdtype(array.dtype, np.floating):
                array = array.astype(np.float32)
            else:
                raise ValueError(
                    f"images of dtype {array.dtype}: expected uint8 or float pixels 0..255"
                )
        return pb.Images(tensor=to_tensor(array))
    if isinstance(images, str | bytes | os.PathLike):
        raise TypeError("images: pass a list of files (paths or bytes), or an array of pixels")
    files = [item if isinstance(item, bytes) else Path(item).read_bytes() for item in images]
    return pb.Images(encoded=pb.EncodedImages(files=files))


def _spec(model: str | None, version: int | None) -> pb.ModelSpec:
    return pb.ModelSpec(name=model or "", version=version or 0)


def predict_request(
    images: Images, model: str | None, version: int | None, top_k: int
) -> pb.PredictRequest:
    return pb.PredictRequest(
        model=_spec(model, version), images=_images_message(images), top_k=top_k
    )


def _predict_result(response: pb.PredictResponse) -> PredictResult:
    probabilities = from_tensor(response.probabilities)
    return PredictResult(
        probabilities=probabilities,
        labels=probabilities.argmax(axis=1),
        class_names=tuple(response.class_names),
        top=[[ClassScore(s.index, s.name, s.score) for s in p.top] for p in response.predictions],
        model=response.model.name,
        version=response.model.version,
    )


def feature_map_request(
    images: Images, layer: str | None, pre_activation: bool, model: str | None,
    version: int | None, include_images: bool = False,
) -> pb.FeatureMapRequest:  # fmt: skip
    return pb.FeatureMapRequest(
        model=_spec(model, version), images=_images_message(images), layer=layer or "",
        include_pre_activation=pre_activation, include_images=include_images,
    )  # fmt: skip


def _feature_map_result(response: pb.FeatureMapResponse) -> FeatureMapResult:
    return FeatureMapResult(
        activations=from_tensor(response.activations),
        pre_activations=from_tensor(response.pre_activations)
        if response.HasField("pre_activations")
        else None,
        layer=from_layer_message(response.layer),
        model=response.model.name,
        version=response.model.version,
        images=from_tensor(response.images) if response.HasField("images") else None,
    )


def _explain_request(
    images: Images, layer: str | None, class_index: int | None, method: str,
    model: str | None, version: int | None,
) -> pb.ExplainRequest:  # fmt: skip
    if method and method not in EXPLAIN_METHODS:
        raise ValueError(f"method {method!r}: expected one of {', '.join(EXPLAIN_METHODS)}")
    return pb.ExplainRequest(
        model=_spec(model, version), images=_images_message(images), layer=layer or "",
        class_index=class_index, method=EXPLAIN_METHODS.get(method),
    )  # fmt: skip


def _explain_result(response: pb.ExplainResponse) -> ExplainResult:
    return ExplainResult(
        heatmaps=from_tensor(response.heatmaps),
        classes=np.array(response.class_indices),
        probabilities=from_tensor(response.probabilities),
        class_names=tuple(response.class_names),
        layer=from_layer_message(response.layer) if response.HasField("layer") else None,
        model=response.model.name,
        version=response.model.version,
        method=METHOD_NAMES.get(response.method, str(response.method)),
    )


def _filters_result(response: pb.FiltersResponse) -> FiltersResult:
    return FiltersResult(
        kernels=from_tensor(response.kernels),
        biases=from_tensor(response.biases) if response.HasField("biases") else None,
        layer=from_layer_message(response.layer),
        model=response.model.name,
        version=response.model.version,
    )


def _model_info(response: pb.ModelMetadata) -> ModelInfo:
    return ModelInfo(
        name=response.model.name, version=response.model.version, versions=tuple(response.versions),
        class_names=tuple(response.class_names), input_shape=tuple(response.input.shape),
        preprocessing_scale=response.preprocessing_scale,
        preprocessing_offset=response.preprocessing_offset,
        layers=tuple(from_layer_message(layer) for layer in response.layers),
        parameters=response.parameters, test_accuracy=response.test_accuracy,
        test_loss=response.test_loss, created_at=response.created_at,
        metadata=json.loads(response.metadata_json or "{}"), origin=response.origin,
    )  # fmt: skip


def _model_summaries(response: pb.ListModelsResponse) -> list[ModelSummary]:
    return [
        ModelSummary(
            m.name,
            tuple(m.versions),
            m.latest_version,
            m.is_default,
            tuple(m.class_names),
            m.origin,
        )
        for m in response.models
    ]


def _health_request(service: str) -> bytes:
    # grpc.health.v1.HealthCheckRequest {string service = 1}, encoded by hand: the client
    # needs no health-checking package for one string field.
    name = service.encode()
    if len(name) > 127:
        raise ValueError("health service names are at most 127 bytes")
    return b"\x0a" + bytes([len(name)]) + name if name else b""


def _health_status(data: bytes) -> str:
    # HealthCheckResponse {ServingStatus status = 1}: absent means 0 (UNKNOWN).
    return _HEALTH_STATUS.get(data[1] if data[:1] == b"\x08" else 0, "UNKNOWN")


def _repository_request(name: str) -> bytes:
    # inference.RepositoryModel{Load,Unload}Request {string model_name = 2}, encoded by hand
    # like the health check: the client never loads the `inference` stubs, which would clash
    # with tritonclient's in a process that uses both.
    data = name.encode()
    if not 0 < len(data) < 128:
        raise ValueError("model names are 1 to 127 bytes")
    return b"\x12" + bytes([len(data)]) + data


T = TypeVar("T")


Pem = str | Path | bytes  # a PEM file's path, or its bytes


def read_pem(source: Pem | None) -> bytes | None:
    return source if source is None or isinstance(source, bytes) else Path(source).read_bytes()


def channel_credentials(
    tls: bool, ca_cert: Pem | None, client_cert: Pem | None, client_key: Pem | None
) -> grpc.ChannelCredentials | None:
    """TLS credentials when any TLS option is given (else None: plaintext)."""
    if not (tls or ca_cert or client_cert or client_key):
        return None
    if (client_cert is None) != (client_key is None):
        raise ValueError("client_cert and client_key go together: give both or neither")
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca_cert),  # None: the system's trusted CAs
        private_key=read_pem(client_key),
        certificate_chain=read_pem(client_cert),
    )


def open_channel(
    module: Any,
    target: str,
    credentials: grpc.ChannelCredentials | None,
    options: Sequence[tuple[str, Any]] = (),
) -> Any:
    """A `module` (grpc or grpc.aio) channel: TLS with `credentials`, else plaintext."""
    if credentials is None:
        return module.insecure_channel(target, options=options)
    return module.secure_channel(target, credentials, options=options)


class _Base:
    _grpc: Any  # the module whose channels this client uses: grpc or grpc.aio

    def __init__(
        self,
        target: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        retries: int = 3,
        token: str | None = None,
        tls: bool = False,
        ca_cert: Pem | None = None,
        client_cert: Pem | None = None,
        client_key: Pem | None = None,
        connections: int = 1,
    ) -> None:
        if connections < 1:
            raise ValueError(f"connections {connections}: expected 1 or more")
        credentials = channel_credentials(tls, ca_cert, client_cert, client_key)
        options = _channel_options(max_message_bytes, retries)
        if connections > 1:  # a connection each: gRPC otherwise shares one between channels
            options = [*options, ("grpc.use_local_subchannel_pool", 1)]
        self.target = target
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._connections = [
            _Connection(open_channel(self._grpc, target, credentials, options))
            for _ in range(connections)
        ]
        self._next = itertools.cycle(self._connections).__next__  # calls take turns

    @property
    def _stub(self) -> Any:
        return self._next().stub

    @property
    def _health(self) -> Any:
        return self._next().health

    @property
    def _load(self) -> Any:
        return self._next().load

    @property
    def _unload(self) -> Any:
        return self._next().unload

    def _timeout(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout


class _Connection:
    """One channel (a connection to one of the server's workers) and its methods."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.stub = pb_grpc.ConvServeStub(channel)
        self.health = channel.unary_unary(
            _HEALTH_CHECK, request_serializer=_health_request, response_deserializer=_health_status
        )
        self.load, self.unload = (
            channel.unary_unary(f"{_REPOSITORY}{method}", request_serializer=_repository_request)
            for method in ("RepositoryModelLoad", "RepositoryModelUnload")
        )


class Client(_Base):
    """A blocking client: `with Client("localhost:50051") as c: c.predict(images)`.

    Every call has a deadline (`timeout` seconds unless the call gives its own), UNAVAILABLE is
    retried by gRPC with backoff, and failures raise `client.errors.ConvserveError` subclasses.
    `token` goes with every call as `authorization: Bearer TOKEN`; `tls=True` or `ca_cert`
    (PEM path or bytes; default the system's CAs) connect over TLS, with `client_cert` and
    `client_key` for mutual TLS. `connections=N` spreads the calls over N connections in
    turn: a server's workers each take whole connections, so a client that wants every
    worker busy opens a few per worker (one connection reaches one worker).
    """

    _grpc = grpc

    def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(request, timeout=self._timeout(timeout), metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def predict(
        self, images: Images, *, model: str | None = None, version: int | None = None,
        top_k: int = 3, timeout: float | None = None,
    ) -> PredictResult:  # fmt: skip
        """Class probabilities and the `top_k` classes of each image (pixels 0..255 as they are)."""
        request = predict_request(images, model, version, top_k)
        return _predict_result(self._call(self._stub.Predict, request, timeout))

    def feature_map(
        self, images: Images, *, layer: str | None = None, pre_activation: bool = False,
        include_images: bool = False, model: str | None = None, version: int | None = None,
        timeout: float | None = None,
    ) -> FeatureMapResult:  # fmt: skip
        """The activations of `layer` (default: the first conv layer) for each image; with
        `include_images`, also the images as the model took them (`FeatureMapResult.images`)."""
        request = feature_map_request(images, layer, pre_activation, model, version, include_images)
        return _feature_map_result(self._call(self._stub.FeatureMap, request, timeout))

    def explain(
        self, images: Images, *, layer: str | None = None, class_index: int | None = None,
        method: str = "", model: str | None = None, version: int | None = None,
        timeout: float | None = None,
    ) -> ExplainResult:  # fmt: skip
        """Heatmaps of the evidence for `class_index` (default: each image's most probable
        class). `method`: "gradcam" (Grad-CAM, for global average pooling heads), "hirescam"
        (HiResCAM, for any head) at conv layer `layer` (default: the last one with a gradient
        graph), or "occlusion" (no gradients, any model); default: the model's choice."""
        request = _explain_request(images, layer, class_index, method, model, version)
        return _explain_result(self._call(self._stub.Explain, request, timeout))

    def filters(
        self, layer: str | None = None, *, model: str | None = None, version: int | None = None,
        timeout: float | None = None,
    ) -> FiltersResult:  # fmt: skip
        """The kernels and biases of conv layer `layer` (default: the first conv layer)."""
        request = pb.FiltersRequest(model=_spec(model, version), layer=layer or "")
        return _filters_result(self._call(self._stub.Filters, request, timeout))

    def metadata(
        self, model: str | None = None, version: int | None = None, *, timeout: float | None = None
    ) -> ModelInfo:
        request = pb.GetModelMetadataRequest(model=_spec(model, version))
        return _model_info(self._call(self._stub.GetModelMetadata, request, timeout))

    def list_models(self, *, timeout: float | None = None) -> list[ModelSummary]:
        return _model_summaries(self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout))

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """`SERVING`, `NOT_SERVING`, …, for the server ("") or one model name."""
        return str(self._call(self._health, service, timeout))

    def load_model(self, name: str, *, timeout: float | None = None) -> None:
        """Load (or reload) every version of `name` the server's version policy selects, from
        its model directory; undoes `unload_model`. Returns once they serve."""
        self._call(self._load, name, timeout)

    def unload_model(self, name: str, *, timeout: float | None = None) -> None:
        """Stop serving `name` (requests in flight finish) until `load_model(name)`."""
        self._call(self._unload, name, timeout)

    def close(self) -> None:
        for connection in self._connections:
            connection.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncClient(_Base):
    """The asyncio twin of `Client`: `async with AsyncClient(target) as c: await c.predict(x)`."""

    _grpc = grpc.aio

    async def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return await method(request, timeout=self._timeout(timeout), metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    async def predict(
        self, images: Images, *, model: str | None = None, version: int | None = None,
        top_k: int = 3, timeout: float | None = None,
    ) -> PredictResult:  # fmt: skip
        request = predict_request(images, model, version, top_k)
        return _predict_result(await self._call(self._stub.Predict, request, timeout))

    async def feature_map(
        self, images: Images, *, layer: str | None = None, pre_activation: bool = False,
        include_images: bool = False, model: str | None = None, version: int | None = None,
        timeout: float | None = None,
    ) -> FeatureMapResult:  # fmt: skip
        request = feature_map_request(images, layer, pre_activation, model, version, include_images)
        return _feature_map_result(await self._call(self._stub.FeatureMap, request, timeout))

    async def explain(
        self, images: Images, *, layer: str | None = None, class_index: int | None = None,
        method: str = "gradcam", model: str | None = None, version: int | None = None,
        timeout: float | None = None,
    ) -> ExplainResult:  # fmt: skip
        request = _explain_request(images, layer, class_index, method, model, version)
        return _explain_result(await self._call(self._stub.Explain, request, timeout))

    async def filters(
        self, layer: str | None = None, *, model: str | None = None, version: int | None = None,
        timeout: float | None = None,
    ) -> FiltersResult:  # fmt: skip
        request = pb.FiltersRequest(model=_spec(model, version), layer=layer or "")
        return _filters_result(await self._call(self._stub.Filters, request, timeout))

    async def metadata(
        self, model: str | None = None, version: int | None = None, *, timeout: float | None = None
    ) -> ModelInfo:
        request = pb.GetModelMetadataRequest(model=_spec(model, version))
        return _model_info(await self._call(self._stub.GetModelMetadata, request, timeout))

    async def list_models(self, *, timeout: float | None = None) -> list[ModelSummary]:
        return _model_summaries(
            await self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        )

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        return str(await self._call(self._health, service, timeout))

    async def load_model(self, name: str, *, timeout: float | None = None) -> None:
        await self._call(self._load, name, timeout)

    async def unload_model(self, name: str, *, timeout: float | None = None) -> None:
        await self._call(self._unload, name, timeout)

    async def close(self) -> None:
        for connection in self._connections:
            await connection.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
