"""The no-op ceiling: the cheapest grpc.aio server for convserve's method paths.

It answers every call with one fixed, pre-serialized response and never decodes the request,
so its figures are what the transport (grpc.aio + HTTP/2 + this machine) can carry at best.

    .venv/bin/python bench/ceiling.py --port 50052
"""

from __future__ import annotations

import argparse
import asyncio

import grpc
import numpy as np

from convserve.api.codec import to_tensor
from convserve.api.pb.convserve.v1 import convserve_pb2 as pb

SERVICE = "convserve.v1.ConvServe"


def fixed_response(images: int = 1, classes: int = 10) -> bytes:
    """A realistic PredictResponse: uniform probabilities and a top-3 for each image."""
    probabilities = np.full((images, classes), 1 / classes, np.float32)
    top = [pb.ClassScore(index=i, name=f"class {i}", score=0.1) for i in range(3)]
    return pb.PredictResponse(
        model=pb.ModelSpec(name="fashion", version=1),
        probabilities=to_tensor(probabilities),
        predictions=[pb.Prediction(top=top)] * images,
        class_names=[f"class {i}" for i in range(classes)],
    ).SerializeToString()


async def serve(host: str, port: int) -> None:
    responses = {1: fixed_response(1), 64: fixed_response(64)}

    async def predict(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        # Big requests get a 64-image answer, so response sizes match convserve's.
        return responses[64] if len(request) > 10_000 else responses[1]

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    handlers = {"Predict": grpc.unary_unary_rpc_method_handler(predict)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"ceiling serving on {host}:{port}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description="the no-op gRPC ceiling server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50052)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
