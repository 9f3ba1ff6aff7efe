"""The convserve client library: gRPC, protobuf and numpy only — never TensorFlow."""

from client.client import (
    AsyncClient,
    ClassScore,
    Client,
    ExplainResult,
    FeatureMapResult,
    FiltersResult,
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
    "ExplainResult",
    "FeatureMapResult",
    "FiltersResult",
    "Layer",
    "ModelInfo",
    "ModelSummary",
    "PredictResult",
]
