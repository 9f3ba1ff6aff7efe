"""The HTTP door: aiohttp on the server's own event loop, every route through the one boundary.

A route reads its body, translates it into the gRPC API's request message, calls the same
servicer method gRPC calls, and translates the answer back (service.http.rest for the Open
Inference Protocol's REST API, service.http.connect for the APIs as JSON). Around it, the
door does what the gRPC door does, with the same code: the token check (`TokenAuth.refusal`,
on the gRPC method the route stands for), and `Boundary.answer` — admission, the deadline
(`Connect-Timeout-Ms`), the request id (`x-request-id`, sent back), the time it took
(`Server-Timing`), metrics with
`protocol="http"`, the access log, and the status of every error (`errors.http_status`).

aiohttp rather than starlette on uvicorn: both answered a JSON POST at the same rate here
(h2load --h1, 64 in flight: 9.7k and 9.5k req/s, then 7.1k and 8.0k), and aiohttp runs on the
loop gRPC already has, with no second server loop, signal handlers or ASGI layer in between.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web

from service.boundary import REQUEST_ID_KEY, Boundary, Malformed, new_request_id, refused
from service.errors import (
    InvalidInput,
    SlowRequest,
    TooLarge,
    UnsupportedMediaType,
    http_status,
)
from service.grpc.auth import TokenAuth

__all__ = ["Door", "HttpContext", "Route", "json_response"]

# How long a request body may take to arrive when its call has no deadline.
BODY_SECONDS = 30.0

# route(request, context) → response; runs inside the boundary.
Call = Callable[[web.Request, "HttpContext"], Awaitable[web.StreamResponse]]
# error(status, gRPC code, message) → the API's error response.
ErrorBody = Callable[[int, grpc.StatusCode, str], web.StreamResponse]


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


class HttpContext:
    """What the boundary and servicers know of an HTTP call: its deadline. Past it, the
    call is still answered (DEADLINE_EXCEEDED): the caller may be waiting for it."""

    __slots__ = ("deadline",)
    answers_late = True

    def __init__(self, timeout_ms: str | None) -> None:
        self.deadline: float | None = None
        if timeout_ms is not None:
            if not (timeout_ms.isascii() and timeout_ms.isdigit() and len(timeout_ms) <= 10):
                raise InvalidInput(
                    f"Connect-Timeout-Ms {timeout_ms[:20]!r}: expected milliseconds, e.g. 5000"
                )
            self.deadline = time.monotonic() + int(timeout_ms) / 1000

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def cancelled(self) -> bool:
        return False

    def code(self) -> grpc.StatusCode | None:
        return None


class Route:
    """One HTTP route of an API: the gRPC method it stands for, and how its errors read."""

    __slots__ = ("call", "error", "grpc_method", "method", "open")

    def __init__(
        self, grpc_method: str, call: Call, error: ErrorBody, *, open: bool = False
    ) -> None:
        self.grpc_method = grpc_method  # "/package.Service/Method": the token's scope
        self.method = grpc_method.rsplit("/", 1)[1]  # metrics' and the access log's name
        self.call = call
        self.error = error
        self.open = open  # health, for probes: no token, no metrics, no access log


class Door:
    """The routes of every API over one `Boundary`, as an aiohttp application."""

    def __init__(self, boundary: Boundary, auth: TokenAuth | None, max_bytes: int) -> None:
        self._boundary = boundary
        self._auth = auth
        self.max_bytes = max_bytes
        self.app = web.Application(client_max_size=max_bytes, middlewares=[_json_errors])
        self.app.on_response_prepare.append(_with_request_id)

    def add(self, http_method: str, path: str, route: Route) -> None:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._answer(request, route)

        self.app.router.add_route(http_method, path, handle, expect_handler=_expect)

    async def _answer(self, request: web.Request, route: Route) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = _request_id(request)
        refusal = None
        if self._auth is not None and not route.open:
            authorization = request.headers.get("Authorization", "")
            refusal = self._auth.refusal(route.grpc_method, authorization)
        if route.open:  # health probes: like gRPC's health service, not counted or logged
            response = await route.call(request, HttpContext(None))
        elif refusal is not None:
            code, message = refusal
            refused(route.method, code, request_id, "http")
            response = route.error(http_status(code), code, message)
        else:
            call: Any = request
            try:
                context = HttpContext(request.headers.get("Connect-Timeout-Ms"))
            except InvalidInput as exc:  # refused by the boundary, counted and logged
                context, call = HttpContext(None), Malformed(str(exc))
            answer = await self._boundary.answer(
                route.call, route.method, call, context, request_id, "http"
            )
            if answer.code is grpc.StatusCode.OK:
                response = answer.response
            else:
                status = http_status(answer.code, answer.error)
                response = route.error(status, answer.code, answer.message)
        response.headers[REQUEST_ID_KEY] = request_id
        # How long the server took, for the caller to see (the explorer page shows it).
        milliseconds = (time.perf_counter() - started) * 1000
        response.headers["Server-Timing"] = f"convserve;dur={milliseconds:.2f}"
        return response

    async def body(self, request: web.Request, context: HttpContext) -> bytes:
        """The request's body: refused from its Content-Length when over the limit, and
        when it does not arrive by the call's deadline (else within BODY_SECONDS); a
        compressed one (Content-Encoding) is refused."""
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):  # a 64 KB gzip body can inflate to 64 MB
            raise UnsupportedMediaType(
                f"Content-Encoding {encoding[:20]!r}: this server takes uncompressed bodies"
            )
        length = request.content_length
        if length is not None and length > self.max_bytes:
            raise TooLarge(
                f"the request body is {length} bytes; this server takes at most "
                f"{self.max_bytes} (max_message_bytes)"
            )
        remaining = context.time_remaining()
        seconds = BODY_SECONDS if remaining is None else max(remaining, 0.0)
        try:
            async with asyncio.timeout(seconds):
                return await request.read()
        except TimeoutError:
            raise SlowRequest(f"the request body did not arrive within {seconds:.1f} s") from None
        except web.HTTPRequestEntityTooLarge:  # no Content-Length, and more than the limit
            raise TooLarge(
                f"the request body is over {self.max_bytes} bytes (max_message_bytes)"
            ) from None
        except ConnectionError:  # the caller went away mid-body: no one to answer
            raise asyncio.CancelledError from None

    async def serve(
        self,
        host: str,
        port: int,
        *,
        reuse_port: bool,
        ssl_context: ssl.SSLContext | None,
        grace_seconds: float,
    ) -> tuple[web.AppRunner, int]:
        """Listen on host:port; (the runner to stop it with, giving calls in flight
        `grace_seconds`; the bound port)."""
        runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=grace_seconds,
            auto_decompress=False,  # compressed bodies are refused (`body`), never inflated
        )  # fmt: skip
        await runner.setup()
        site = web.TCPSite(
            runner, host, port, reuse_port=reuse_port or None, ssl_context=ssl_context
        )
        await site.start()
        return runner, int(runner.addresses[0][1])


def _json_error(request: web.Request, status: int, message: str) -> web.Response:
    """An error answered outside any route (aiohttp's own), as JSON."""
    body: dict[str, str] = {"error": message}
    if request.path.startswith("/convserve.") or request.path.startswith("/inference."):
        body = {"code": "unimplemented" if status == 404 else "unknown", "message": message}
    return json_response(body, status)


def _request_id(request: web.Request) -> str:
    """The caller's x-request-id, or a new one (as the gRPC door's)."""
    return request.headers.get(REQUEST_ID_KEY, "")[:128] or new_request_id()


async def _with_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer has a request id, aiohttp's own ones too."""
    if REQUEST_ID_KEY not in response.headers:
        response.headers[REQUEST_ID_KEY] = _request_id(request)


async def _expect(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue` as aiohttp answers it; any other expectation a JSON 417."""
    expect = request.headers.get("Expect", "")
    if expect.lower() != "100-continue":
        return _json_error(request, 417, f"Expect {expect[:40]!r}: only 100-continue is known")
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
    return None


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own answers (no such route, method not allowed) as JSON, as every error."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allowed = exc.headers.get("Allow")
        message = f"{request.method} {request.path}: {exc.reason}"
        if allowed:
            message += f"; allowed: {allowed}"
        response = _json_error(request, exc.status, message)
        if allowed:
            response.headers["Allow"] = allowed
        return response
