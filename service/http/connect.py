"""Every unary method of the gRPC APIs over HTTP, as the Connect protocol's unary calls:
`POST /convserve.v1.ConvServe/Predict` (and every other method of convserve.v1 and of the
Open Inference Protocol's `inference.GRPCInferenceService`), the request and the answer in
the proto3 JSON mapping (`Content-Type: application/json`) or as protobuf bytes
(`application/proto`), the deadline in `Connect-Timeout-Ms`, an error as
{"code": "not_found", "message": TEXT} with the protocol's HTTP status.

Served here over the door's aiohttp rather than by the `connectrpc` runtime: that is an ASGI
application with its own server, interceptors and error mapping, where a route here is one
call through the same boundary as every gRPC call (and costs one JSON translation).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError

from service.errors import InvalidInput, UnsupportedMediaType
from service.http.door import Door, HttpContext, Route, json_response

__all__ = ["add_routes"]

JSON, PROTO = "application/json", "application/proto"


def add_routes(
    door: Door,
    service: ServiceDescriptor,
    servicer: Any,
    raw_responses: Iterable[str] = (),
) -> None:
    """A route for each unary method of `service`; the methods of `raw_responses` answer
    with wire bytes (see `Boundary.add_service`)."""
    raw = frozenset(raw_responses)
    for method in service.methods:
        if method.client_streaming or method.server_streaming:
            continue
        path = f"/{service.full_name}/{method.name}"
        call = _Method(door, method, getattr(servicer, method.name), method.name in raw)
        door.add("POST", path, Route(path, call, _error))


def _error(status: int, code: grpc.StatusCode, message: str) -> web.Response:
    return json_response({"code": code.name.lower(), "message": message}, status)


class _Method:
    """One method: the request decoded as its content type says, the answer encoded alike."""

    def __init__(self, door: Door, method: MethodDescriptor, handler: Any, raw: bool) -> None:
        self._door = door
        self._request = message_factory.GetMessageClass(method.input_type)
        self._response = message_factory.GetMessageClass(method.output_type)
        self._handler = handler
        self._raw = raw
        self._name = method.input_type.full_name

    async def __call__(self, request: web.Request, context: HttpContext) -> web.Response:
        kind = request.content_type
        if kind not in (JSON, PROTO):
            raise UnsupportedMediaType(
                f"Content-Type {kind!r}: expected {JSON} or {PROTO} (the Connect protocol)"
            )
        body = await self._door.body(request, context)
        try:
            if kind == PROTO:
                message = self._request.FromString(body)
            else:
                message = json_format.Parse(body, self._request())
        except (DecodeError, json_format.ParseError, UnicodeError, RecursionError) as exc:
            raise InvalidInput(f"the request is not a valid {self._name} ({kind}): {exc}") from None
        answer = await self._handler(message, context)
        if kind == PROTO:
            wire = answer if self._raw else answer.SerializeToString()
            return web.Response(body=wire, content_type=PROTO)
        if self._raw:
            answer = self._response.FromString(answer)
        return web.Response(body=json_format.MessageToJson(answer, indent=None), content_type=JSON)
