"""convserve.v1.ConvServe: thin methods over the shared `Engine` — translate, look up, run,
encode convserve.v1's answers."""

from __future__ import annotations

import json
import weakref

import grpc
import numpy as np

from convserve.api.codec import EXPLAIN_METHODS, METHOD_NAMES, from_tensor, layer_message, to_tensor
from convserve.api.pb.convserve.v1 import convserve_pb2 as pb
from convserve.api.pb.convserve.v1 import convserve_pb2_grpc as pb_grpc
from service.boundary import Boundary, CallContext
from service.errors import InvalidInput
from service.grpc.engine import Engine, Images
from service.model import Model
from service.repository import Repository
from service.responses import PredictEncoder

__all__ = ["RAW_RESPONSES", "SERVICE", "SERVICE_NAME", "ConvServeServicer", "add_to_server"]

SERVICE = pb.DESCRIPTOR.services_by_name["ConvServe"]
SERVICE_NAME = SERVICE.full_name
DEFAULT_TOP_K = 3


class ConvServeServicer(pb_grpc.ConvServeServicer):  # type: ignore[misc]
    """convserve.v1 messages ⇄ the shared `Engine`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Made on a model's first Predict; gone with the model once no call holds it.
        self._encoders: weakref.WeakKeyDictionary[Model, PredictEncoder] = (
            weakref.WeakKeyDictionary()
        )

    async def Predict(self, request: pb.PredictRequest, context: CallContext) -> bytes:
        """Answers with the response's wire bytes (see `add_to_server`)."""
        model = self.engine.model(request.model.name, request.model.version)
        top_k = _top_k(request.top_k)
        pixels = await self.engine.pixels(model, _images(request.images))
        probabilities = await self.engine.predict(model, pixels)
        return self._encoder(model).encode(probabilities, top_k)

    async def FeatureMap(
        self, request: pb.FeatureMapRequest, context: CallContext
    ) -> pb.FeatureMapResponse:
        model = self.engine.model(request.model.name, request.model.version)
        layer = request.layer or model.default_layer
        pixels = await self.engine.pixels(model, _images(request.images))
        activations, pre = await self.engine.feature_map(
            model, layer, pixels, request.include_pre_activation
        )
        return pb.FeatureMapResponse(
            model=pb.ModelSpec(name=model.name, version=model.version),
            layer=layer_message(model.layers[layer]),
            activations=to_tensor(activations),
            pre_activations=to_tensor(pre) if pre is not None else None,
            images=to_tensor(_as_uint8(pixels)) if request.include_images else None,
        )

    async def Explain(self, request: pb.ExplainRequest, context: CallContext) -> pb.ExplainResponse:
        model = self.engine.model(request.model.name, request.model.version)
        if request.method not in METHOD_NAMES:
            raise InvalidInput(
                f"method {request.method}: expected one of {', '.join(pb.ExplainMethod.keys())}"
            )
        explanation = model.explanation(
            METHOD_NAMES[request.method] if request.HasField("method") else "",
            request.layer,
            request.class_index if request.HasField("class_index") else None,
        )
        pixels = await self.engine.pixels(model, _images(request.images))
        heatmaps, classes, probabilities = await self.engine.explain(model, pixels, explanation)
        return pb.ExplainResponse(
            model=pb.ModelSpec(name=model.name, version=model.version),
            layer=layer_message(model.layers[explanation.layer]) if explanation.layer else None,
            method=EXPLAIN_METHODS[explanation.method],
            heatmaps=to_tensor(heatmaps),
            class_indices=classes.tolist(),
            probabilities=to_tensor(probabilities),
            class_names=model.class_names,
        )

    async def Filters(self, request: pb.FiltersRequest, context: CallContext) -> pb.FiltersResponse:
        model = self.engine.model(request.model.name, request.model.version)
        layer = request.layer or model.default_layer
        kernels, biases = model.filters(layer)
        return pb.FiltersResponse(
            model=pb.ModelSpec(name=model.name, version=model.version),
            layer=layer_message(model.layers[layer]),
            kernels=to_tensor(kernels),
            biases=to_tensor(biases) if biases is not None else None,
        )

    async def GetModelMetadata(
        self, request: pb.GetModelMetadataRequest, context: CallContext
    ) -> pb.ModelMetadata:
        model = self.engine.model(request.model.name, request.model.version)
        return _metadata(model, self.engine.repository)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: CallContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[
                pb.ModelSummary(
                    name=status.name,
                    versions=status.versions,
                    latest_version=max(status.versions),
                    is_default=status.is_default,
                    class_names=status.class_names,
                    origin=status.origin,
                )
                for status in self.engine.repository.status()
            ]
        )

    def _encoder(self, model: Model) -> PredictEncoder:
        """Writes `model`'s Predict answers."""
        encoder = self._encoders.get(model)
        if encoder is None:
            encoder = PredictEncoder(model.name, model.version, model.class_names)
            self._encoders[model] = encoder
        return encoder


# Predict's answer is already wire bytes (`PredictEncoder`): passed through as they are.
RAW_RESPONSES = frozenset({"Predict"})


def add_to_server(servicer: ConvServeServicer, server: grpc.aio.Server, boundary: Boundary) -> None:
    boundary.add_service(servicer, SERVICE, server, raw_responses=RAW_RESPONSES)


def _images(images: pb.Images) -> Images:
    """convserve.v1's Images: a tensor (through the codec) or PNG/JPEG files."""
    source = images.WhichOneof("source")
    if source == "encoded":
        return images.encoded.files
    if source is None:
        raise InvalidInput(
            "no images: set images.tensor (uint8 or float32 pixels) "
            "or images.encoded (PNG/JPEG files)"
        )
    return from_tensor(images.tensor)


def _as_uint8(pixels: np.ndarray) -> np.ndarray:
    """float32 pixels 0..255 → uint8, rounded (the images a FeatureMap call asked to see)."""
    rounded: np.ndarray = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return rounded


def _top_k(top_k: int) -> int:
    """How many classes each prediction lists: `top_k`, or DEFAULT_TOP_K for 0."""
    if top_k < 0:
        raise InvalidInput(f"top_k must be >= 0 (0 means {DEFAULT_TOP_K}), got {top_k}")
    return top_k or DEFAULT_TOP_K


def _metadata(model: Model, repository: Repository) -> pb.ModelMetadata:
    meta = model.metadata
    return pb.ModelMetadata(
        model=pb.ModelSpec(name=model.name, version=model.version),
        versions=repository.versions(model.name),
        class_names=model.class_names,
        input=pb.InputSpec(
            name=meta.input.name, shape=meta.input.shape, dtype=pb.DATA_TYPE_FLOAT32
        ),
        preprocessing_scale=meta.preprocessing.scale,
        preprocessing_offset=meta.preprocessing.offset,
        layers=[layer_message(layer) for layer in meta.layers],
        parameters=meta.parameters,
        test_accuracy=meta.evaluation.get("test_accuracy", 0.0),
        test_loss=meta.evaluation.get("test_loss", 0.0),
        created_at=meta.created_at,
        metadata_json=json.dumps(meta.to_dict()),
        origin=meta.describe_origin(),
    )
