"""The one boundary between the doors (gRPC, HTTP) and the service: every call of convserve's
APIs, and every message of a stream, passes through it.

`Boundary.add_service` registers a servicer's methods on a gRPC server wrapped in it; the HTTP
door (service.http) passes each call through `Boundary.answer`, the same code. Requests are parsed
leniently: bytes that are not the request message reach it as `Malformed` and get
INVALID_ARGUMENT (gRPC would say UNKNOWN). For each call, and each message of a
bidirectional stream, it admits the work (or refuses it: malformed, too many in flight,
deadline passed), maps `ServiceError` to its status and anything else to INTERNAL (traceback
logged, a generic message to the caller), counts it by model, version, method and code with
its latency and the calls in flight, answers with the call's request id (the caller's
`x-request-id` metadata, or a new one) in the trailing metadata, and logs it to the access
log (`--access-log`). A failed stream message is answered with the servicer's error message
for it and the stream goes on. (A grpc.aio ServerInterceptor did the same at 15% of the
ceiling's throughput: it wraps every call in another handler and coroutine.) A call the
token check refuses before it is read (service.grpc.auth) is answered by `refusing`, with
its request id, its count and its access-log line like every other refusal.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, NamedTuple, Protocol

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor

from service import metrics
from service.calls import ANSWERED_BY, DEADLINE
from service.errors import DeadlineExceeded, InvalidInput, ResourceExhausted, status
from service.settings import ACCESS_LOGGER

__all__ = [
    "REQUEST_ID_KEY",
    "Answer",
    "Boundary",
    "CallContext",
    "Malformed",
    "failure",
    "new_request_id",
    "record",
    "refused",
    "refusing",
]

log = logging.getLogger(__name__)
access = logging.getLogger(ACCESS_LOGGER)

# Longer error messages are cut: gRPC clients refuse trailers over 8-16 KB.
MAX_MESSAGE = 1000

# The caller's request id (or a new one), sent back in the trailing metadata of every answer.
REQUEST_ID_KEY = "x-request-id"

Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
# A failed stream message's answer: (the request, "CODE: message") → a response message.
StreamError = Callable[[Any, str], Any]


# A new request id: this process's random 64 bits, then its count of calls (32 hex digits,
# unique across processes and replicas); uuid4() cost a getrandom system call per call.
_ID_PREFIX = uuid.uuid4().hex[:16]
_calls = itertools.count()


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_calls):016x}"


def _request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str):
            return value[:128]
    return new_request_id()


_series: dict[tuple[str, str, str, str, str], tuple[Any, Any]] = {}


def record(
    model: str, version: str, method: str, code: str, seconds: float, protocol: str = "grpc"
) -> None:
    """Count one answered call (a unary call, or one message of a stream) and its latency."""
    key = (model, version, method, code, protocol)
    series = _series.get(key)
    if series is None:  # label lookups cost more than the increments: do them once
        series = _series[key] = (
            metrics.REQUESTS.labels(model, version, method, code, protocol),
            metrics.REQUEST_DURATION.labels(model, method, protocol),
        )
    series[0].inc()
    series[1].observe(seconds)


class CallContext(Protocol):
    """What the boundary and the servicers need of a call: gRPC's ServicerContext, or the
    HTTP door's."""

    def time_remaining(self) -> float | None: ...

    def cancelled(self) -> bool: ...

    def code(self) -> grpc.StatusCode | None: ...


class Answer(NamedTuple):
    """A call's outcome: its response, or its status, message and the exception raised."""

    response: Any
    code: grpc.StatusCode
    message: str = ""
    error: Exception | None = None


class Malformed:
    """A request whose bytes are not its message: the boundary answers INVALID_ARGUMENT.

    gRPC would answer a parse failure with UNKNOWN; parsing leniently keeps that decision here.
    """

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem

    def reject(self) -> InvalidInput:
        return InvalidInput(self.problem)


def _parser(message_type: Any) -> Callable[[bytes], Any]:
    name = message_type.DESCRIPTOR.full_name

    def parse(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except Exception as exc:  # DecodeError: truncated, bad UTF-8, wrong wire types, ...
            return Malformed(f"the request is not a valid {name} message: {exc}")

    return parse


# gRPC's handler constructor for each (request streaming, response streaming).
HANDLERS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def failure(exc: Exception, what: str) -> tuple[grpc.StatusCode, str]:
    """The status and message a caller gets for `exc` (see `service.errors.status`); for a bug,
    INTERNAL and a generic message, the traceback logged as `what` failing."""
    code = status(exc)
    if code is None:
        log.error("%s failed", what, exc_info=exc)
        return grpc.StatusCode.INTERNAL, "internal error; the server log has the details"
    message = str(exc)  # it may quote a caller's 20,000-character name: keep the trailer small
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + " ... (message cut)"
    return code, message


def _log_access(
    request_id: str, method: str, model: str, version: str, code: str, seconds: float,
    protocol: str,
) -> None:  # fmt: skip
    fields = {"request_id": request_id, "method": method, "model": model, "version": version,
              "code": code, "ms": round(seconds * 1e3, 3), "protocol": protocol}  # fmt: skip
    access.info(" ".join(f"{k}={v}" for k, v in fields.items()), extra={"fields": fields})


def refused(method: str, code: grpc.StatusCode, request_id: str, protocol: str) -> None:
    """Count and log a call refused before it was read (a missing or wrong token)."""
    record("", "", method, code.name, 0.0, protocol)
    if access.isEnabledFor(logging.INFO):
        _log_access(request_id, method, "", "", code.name, 0.0, protocol)


def refusing(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same kind as `handler` (of `method`, e.g. "Predict") that refuses its
    call with `code` and reads none of its messages, answered as the boundary answers every
    call: with its request id, counted, in the access log."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        request_id = _request_id(context)
        refused(method, code, request_id, "grpc")
        await context.abort(code, message, ((REQUEST_ID_KEY, request_id),))

    kind = HANDLERS[(handler.request_streaming, handler.response_streaming)]
    return kind(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class Boundary:
    """One server's door: its calls in flight and the most it takes at once (`limit`)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inflight = 0
        self._inflight_series: dict[str, Any] = {}

    def add_service(
        self,
        servicer: Any,
        service: ServiceDescriptor,
        server: grpc.aio.Server,
        *,
        raw_responses: frozenset[str] = frozenset(),
        stream_errors: Mapping[str, StreamError] | None = None,
    ) -> None:
        """Register every method of `service` on `server`, each behind this boundary.

        A unary method is `async def Method(request, context) -> response`; a bidirectional
        stream's method answers one message the same way, and `stream_errors[name]` makes the
        answer to a message that failed. Answers are serialized, except those of
        `raw_responses`, which are already wire bytes.
        """
        handlers = {}
        for method in service.methods:
            response_type = message_factory.GetMessageClass(method.output_type)
            streaming = (method.client_streaming, method.server_streaming)
            handler = getattr(servicer, method.name)
            if streaming == (False, False):
                behaviour: Any = self._unary(handler, method.name)
            elif streaming == (True, True) and stream_errors and method.name in stream_errors:
                behaviour = self._stream(handler, method.name, stream_errors[method.name])
            else:
                raise ValueError(f"{method.full_name}: no boundary for {streaming} streaming")
            handlers[method.name] = HANDLERS[streaming](
                behaviour,
                request_deserializer=_parser(message_factory.GetMessageClass(method.input_type)),
                response_serializer=(
                    bytes if method.name in raw_responses else response_type.SerializeToString
                ),
            )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service.full_name, handlers),)
        )

    def _unary(self, handler: Handler, method: str) -> Handler:
        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            trailer = ((REQUEST_ID_KEY, _request_id(context)),)
            context.set_trailing_metadata(trailer)
            response, code, message, _ = await self.answer(
                handler, method, request, context, trailer[0][1]
            )
            if code is grpc.StatusCode.OK:
                return response
            # Answered after it is counted: a caller that reads the metrics right after its
            # error finds it there.
            await context.abort(code, message, trailer)

        return unary

    def _stream(
        self, handler: Handler, method: str, error: StreamError
    ) -> Callable[[AsyncIterator[Any], grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]:
        async def stream(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            request_id = _request_id(context)
            context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
            async for request in requests:
                response, code, message, _ = await self.answer(
                    handler, method, request, context, request_id
                )
                yield (
                    response
                    if code is grpc.StatusCode.OK
                    else error(request, f"{code.name}: {message}")
                )

        return stream

    async def answer(
        self,
        handler: Callable[[Any, Any], Awaitable[Any]],
        method: str,
        request: Any,
        context: CallContext,
        request_id: str,
        protocol: str = "grpc",
    ) -> Answer:
        """One call or stream message: its response, or its status and message.

        Raises CancelledError when the caller has gone or its deadline has passed: no answer.
        """
        started = time.perf_counter()
        ANSWERED_BY.set(("", ""))
        code, message, response, error = grpc.StatusCode.OK, "", None, None
        inflight = self._inflight_series.get(method)
        if inflight is None:
            inflight = self._inflight_series[method] = metrics.INFLIGHT.labels(method)
        inflight.inc()
        try:
            if type(request) is Malformed:
                raise request.reject()
            self._admit(context.time_remaining())
            try:
                response = await handler(request, context)
            finally:
                self.inflight -= 1
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code, message = failure(exc, f"{method} (request id {request_id})")
            error = exc
            remaining = context.time_remaining()
            # Past its deadline a gRPC caller has stopped waiting; an HTTP caller may still
            # wait (the deadline was the server's to keep): it gets its answer.
            answers_late = getattr(context, "answers_late", False)
            late = remaining is not None and remaining <= 0 and not answers_late
            if context.cancelled() or late:
                raise asyncio.CancelledError from None  # the caller left or gave up: no answer
        finally:
            inflight.dec()
            model, version = ANSWERED_BY.get()
            seconds = time.perf_counter() - started
            record(model, version, method, code.name, seconds, protocol)
            if access.isEnabledFor(logging.INFO):
                _log_access(request_id, method, model, version, code.name, seconds, protocol)
        return Answer(response, code, message, error)

    def _admit(self, remaining: float | None) -> None:
        """Take work with `remaining` seconds to its deadline (None: none), or refuse it."""
        if self.inflight >= self.limit:
            raise ResourceExhausted(
                f"the server is answering {self.inflight} calls, the most it takes at once "
                f"(max_concurrent_requests); retry later"
            )
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded(
                "the call's deadline had passed when the server took it up; it was not computed"
            )
        DEADLINE.set(None if remaining is None else time.monotonic() + remaining)
        self.inflight += 1
