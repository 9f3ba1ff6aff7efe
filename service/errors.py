"""Errors a request can meet, each with its gRPC status, and the one table that maps any
exception to what the caller is told (`status`, and over HTTP `http_status`), used by the
boundary for every API and door."""

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
    "SlowRequest",
    "TooLarge",
    "Unavailable",
    "UnsupportedMediaType",
    "http_status",
    "status",
]


class ServiceError(Exception):
    """An error the caller can act on; the message says what was wrong and what was expected."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidInput(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class UnsupportedMediaType(InvalidInput):
    """An HTTP body of a content type the route does not read (over HTTP: 415)."""

    http = 415


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class TooLarge(ResourceExhausted):
    """More than a limit lets one request carry or be answered with (images, pixels, bytes):
    a request to make smaller, not to retry (over HTTP: 413, not 429)."""

    http = 413


class SlowRequest(DeadlineExceeded):
    """An HTTP request whose body did not arrive in time (over HTTP: 408, not 504)."""

    http = 408


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


# A status over HTTP: the Connect protocol's mapping (connectrpc.com/docs/protocol), which
# the Open Inference Protocol's REST side uses too; a request too large is 413.
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


def http_status(code: grpc.StatusCode, exc: Exception | None = None) -> int:
    """The HTTP status of an answer with gRPC status `code` (raised as `exc`, if any): the
    table's, or the error's own (`TooLarge` 413, `SlowRequest` 408)."""
    own: int | None = getattr(exc, "http", None)
    return own or HTTP_STATUS[code]
