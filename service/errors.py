"""Errors a request can meet, each with its gRPC status, and the one table that maps any
exception to what the caller is told (`status`), used by the boundary for every API."""

from __future__ import annotations

import grpc

from convserve.api.codec import TensorError

__all__ = [
    "DeadlineExceeded",
    "InvalidInput",
    "ModelLoadError",
    "NotFound",
    "ResourceExhausted",
    "ServiceError",
    "Unavailable",
    "status",
]


class ServiceError(Exception):
    """An error the caller can act on; the message says what was wrong and what was expected."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidInput(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class ModelLoadError(ServiceError):
    """An artifact that cannot be served: missing files, sha256 mismatch, shapes that disagree."""

    code = grpc.StatusCode.FAILED_PRECONDITION


def status(exc: Exception) -> grpc.StatusCode | None:
    """The status the caller gets for `exc`, whose message is then theirs to read; None for
    anything else, a bug: INTERNAL, with a generic message.

    A `ServiceError` carries its own. The codec's `TensorError` is INVALID_ARGUMENT: the server
    decodes only requests' tensors with it (its own answers are float32, which always encode).
    """
    if isinstance(exc, ServiceError):
        return exc.code
    if isinstance(exc, TensorError):
        return grpc.StatusCode.INVALID_ARGUMENT
    return None
