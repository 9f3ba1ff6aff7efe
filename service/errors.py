"""Errors a request can meet, each with its gRPC status; the `@rpc` boundary maps them."""

from __future__ import annotations

import grpc

__all__ = [
    "DeadlineExceeded",
    "InvalidInput",
    "ModelLoadError",
    "NotFound",
    "ResourceExhausted",
    "ServiceError",
    "Unavailable",
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
