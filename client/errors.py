"""Typed exceptions for the gRPC status codes a convserve call can end with."""

from __future__ import annotations

import grpc

__all__ = [
    "ConvserveError",
    "DeadlineExceeded",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
]


class ConvserveError(Exception):
    """A call that did not succeed; `code` is its gRPC status, the message the server's details."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidArgument(ConvserveError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ConvserveError):
    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(ConvserveError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ConvserveError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ConvserveError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(ConvserveError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ConvserveError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Internal(ConvserveError):
    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[ConvserveError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument, NotFound, ResourceExhausted, Unavailable, DeadlineExceeded,
        Unauthenticated, PermissionDenied, Internal,
    )
}  # fmt: skip


def from_rpc_error(error: grpc.RpcError) -> ConvserveError:
    """The typed exception for a failed call (sync or grpc.aio)."""
    code = error.code()
    details = error.details() or code.name
    return _BY_CODE.get(code, ConvserveError)(f"{code.name}: {details}", code)
