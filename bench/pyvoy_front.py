"""A prototype, not a product flag: convserve's Predict and ModelInfer behind pyvoy (Envoy with
an embedded Python: HTTP/2 in C++), as an ASGI app that speaks gRPC's framing itself, through
the same servicers, engine and boundary as `convserve serve`. bench/run.py measures it beside
the default server with `--pyvoy` (pyvoy is not a dependency: `pip install pyvoy`).

    CONVSERVE_MODELS_DIR=models .venv/bin/pyvoy bench.pyvoy_front --port 8081 --loop uvloop

What it leaves out (a product would need it): grpc-timeout is not enforced (the call has no
deadline), a call is not cancelled when its client goes away, there is no health or
reflection service, only uncompressed single-message unary calls are understood, and there
is no token check. One process: pyvoy has no workers.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import grpc

from convserve.api.pb.convserve.v1 import convserve_pb2 as pb
from convserve.api.pb.inference import grpc_predict_v2_pb2 as v2pb
from service.boundary import new_request_id
from service.grpc.server import Server
from service.http.door import HttpContext
from service.settings import Settings

CONTENT_TYPE = (b"content-type", b"application/grpc")


class GrpcApp:
    """ASGI: the lifespan loads the models; each POST is one unary gRPC call."""

    def __init__(self) -> None:
        self.server: Server | None = None
        self.methods: dict[str, tuple[Any, Any, str, bool]] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()  # lifespan.startup
            await self._start()
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        method = self.methods.get(scope["path"])
        code, text, payload = grpc.StatusCode.UNIMPLEMENTED, scope["path"], b""
        if method is not None and self.server is not None:
            parse, handler, name, raw = method
            _, length = struct.unpack(">BI", body[:5])  # not compressed: not asked for
            request = parse(bytes(body[5 : 5 + length]))
            answer = await self.server._boundary.answer(
                handler, name, request, HttpContext(None), new_request_id(), "pyvoy"
            )
            code, text = answer.code, answer.message
            if code is grpc.StatusCode.OK:
                payload = answer.response if raw else answer.response.SerializeToString()
        await send({"type": "http.response.start", "status": 200, "headers": [CONTENT_TYPE],
                    "trailers": True})  # fmt: skip
        frame = struct.pack(">BI", 0, len(payload)) + payload if code is grpc.StatusCode.OK else b""
        await send({"type": "http.response.body", "body": frame})
        trailers = [(b"grpc-status", str(code.value[0]).encode())]
        if text:
            trailers.append((b"grpc-message", text.encode("ascii", "replace")[:1024]))
        await send({"type": "http.response.trailers", "headers": trailers})

    async def _start(self) -> None:
        server = Server(Settings(**{}))  # CONVSERVE_* from the environment
        await asyncio.get_running_loop().run_in_executor(None, server.repository.load_all)
        self.methods = {
            "/convserve.v1.ConvServe/Predict": (
                pb.PredictRequest.FromString,
                server._v1.Predict,
                "Predict",
                True,
            ),
            "/inference.GRPCInferenceService/ModelInfer": (
                v2pb.ModelInferRequest.FromString,
                server._v2.ModelInfer,
                "ModelInfer",
                False,
            ),
        }
        self.server = server


app = GrpcApp()
