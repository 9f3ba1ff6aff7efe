"""The ceilings: the cheapest grpc.aio servers that answer convserve's method paths.

    .venv/bin/python bench/ceiling.py --port 50052 [--responses]

By default it is the no-op server: one generic handler answers every method with an empty
message and never decodes the request, so its figures are what the transport (grpc.aio +
HTTP/2 + this machine) carries at best. `--responses` answers Predict and ModelInfer with a
fixed, pre-serialized answer of convserve's size (1 or 64 images), still without decoding
the request: the transport's cost of the bytes convserve sends back.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import grpc
import numpy as np

from convserve.api.codec import to_tensor
from convserve.api.pb.convserve.v1 import convserve_pb2 as pb
from convserve.api.pb.inference import grpc_predict_v2_pb2 as v2

CLASSES = 10


def predict_response(images: int) -> bytes:
    """A PredictResponse as convserve's: uniform probabilities and a top-3 for each image."""
    probabilities = np.full((images, CLASSES), 1 / CLASSES, np.float32)
    top = [pb.ClassScore(index=i, name=f"class {i}", score=0.1) for i in range(3)]
    return pb.PredictResponse(
        model=pb.ModelSpec(name="fashion", version=1),
        probabilities=to_tensor(probabilities),
        predictions=[pb.Prediction(top=top)] * images,
        class_names=[f"class {i}" for i in range(CLASSES)],
    ).SerializeToString()


def infer_response(images: int) -> bytes:
    """A ModelInferResponse as convserve's: the probabilities as raw little-endian floats."""
    response = v2.ModelInferResponse(model_name="fashion", model_version="1")
    response.outputs.add(name="probabilities", datatype="FP32", shape=[images, CLASSES])
    response.raw_output_contents.append(np.zeros((images, CLASSES), "<f4").tobytes())
    return response.SerializeToString()


class Ceiling(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Every method: the request's bytes in, fixed bytes out (empty unless `responses`)."""

    def __init__(self, responses: bool) -> None:
        fixed = {
            "/convserve.v1.ConvServe/Predict": predict_response,
            "/inference.GRPCInferenceService/ModelInfer": infer_response,
        }
        self._handlers = {
            method: self._handler(make(1), make(64)) for method, make in fixed.items()
        } if responses else {}  # fmt: skip
        self._empty = self._handler(b"", b"")

    @staticmethod
    def _handler(small: bytes, large: bytes) -> Any:
        async def answer(request: bytes, context: Any) -> bytes:
            return large if len(request) > 10_000 else small  # a 64-image request's answer

        return grpc.unary_unary_rpc_method_handler(answer)

    def service(self, details: grpc.HandlerCallDetails) -> Any:
        return self._handlers.get(details.method, self._empty)


async def serve(host: str, port: int, responses: bool) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    server.add_generic_rpc_handlers((Ceiling(responses),))
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"ceiling serving on {host}:{port}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description="the no-op gRPC ceiling server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50052)
    parser.add_argument(
        "--responses", action="store_true", help="answer Predict and ModelInfer at convserve's size"
    )
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.responses))


if __name__ == "__main__":
    main()
