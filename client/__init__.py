"""The convserve client library: gRPC, protobuf and numpy only — never TensorFlow."""

from client.client import (
    AsyncClient,
    ClassScore,
    Client,
    FeatureMapResult,
    Layer,
    ModelInfo,
    ModelSummary,
    PredictResult,
)
from client.errors import ConvserveError

__all__ = [
    "AsyncClient",
    "ClassScore",
    "Client",
    "ConvserveError",
    "FeatureMapResult",
    "Layer",
    "ModelInfo",
    "ModelSummary",
    "PredictResult",
]
