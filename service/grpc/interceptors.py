"""The one place where errors become gRPC statuses and requests become metrics."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from service import metrics
from service.errors import ServiceError

__all__ = ["ServiceInterceptor", "answered_by"]

log = logging.getLogger(__name__)

# The model and version a request resolved to, set by the servicer for the metrics' labels.
answered_by: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar(
    "answered_by", default=("", "")
)


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Maps `ServiceError` to its status, anything else to INTERNAL (traceback logged), and
    counts every unary call by model, version, method and code with its latency."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary

        async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            answered_by.set(("", ""))
            code = grpc.StatusCode.OK
            try:
                return await inner(request, context)  # type: ignore[arg-type]
            except ServiceError as exc:
                code = exc.code
                await context.abort(code, str(exc))
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("%s failed", details.method)
                await context.abort(code, "internal error; the server log has the details")
            finally:
                model, version = answered_by.get()
                metrics.REQUESTS.labels(model, version, method, code.name).inc()
                metrics.REQUEST_DURATION.labels(model, method).observe(
                    time.perf_counter() - started
                )

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
