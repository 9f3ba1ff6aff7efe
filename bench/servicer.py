"""The servicers' own cost: one call through v1 Predict and V2 ModelInfer, no gRPC, no model.

    .venv/bin/python bench/servicer.py [--models-dir models] [--model fashion]
                                       [--api v1,v2] [--calls 20000] [--rounds 15]
                                       [--images 1]

Each call runs the request path as the server does (servicer → engine → batcher → the
servicer's encoder) on a uint8 request of one image (or `--images`), with the model's ONNX
Runtime call replaced by a fixed answer: what is left is convserve's Python per call. Prints
µs per call (min and median over the rounds) per API. Numbers, not a test: run it on two
checkouts to compare a change of the request path.

Time on a shared machine moves with its neighbours; instructions do not. For a count, run
it under callgrind at two sizes and divide the difference by the difference in calls:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/servicer.py --api v1 --calls 500 --rounds 1   # "Collected : N"
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import types
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from client.client import predict_request
from convserve.api.pb.inference import grpc_predict_v2_pb2 as v2
from service.grpc import v1
from service.grpc import v2 as v2_servicer
from service.grpc.server import Server
from service.settings import Settings

Call = Callable[[Any, Any], Awaitable[Any]]


def calls(server: Server, model: str, images: int = 1) -> dict[str, tuple[Call, Any]]:
    """Each API's method and a request of `images` images for it."""
    served = server.repository.get(model)
    image = np.zeros((images, *served.input_shape), np.uint8)
    infer = v2.ModelInferRequest(model_name=model)
    infer.inputs.add(name=served.input_name, datatype="UINT8", shape=image.shape)
    infer.raw_input_contents.append(image.tobytes())
    return {
        "v1": (
            v1.ConvServeServicer(server.engine).Predict,
            predict_request(image, model, None, 3),
        ),
        "v2": (
            v2_servicer.InferenceServicer(server.engine, server.control, server.ready).ModelInfer,
            infer,
        ),
    }


async def measure(call: Call, request: Any, count: int, rounds: int) -> list[float]:
    """µs per call of `rounds` rounds of `count` calls, after a warm-up round."""
    for _ in range(min(count, 2000)):
        await call(request, None)
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(count):
            await call(request, None)
        timings.append((time.perf_counter() - started) / count * 1e6)
    return timings


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--model", default="fashion")
    parser.add_argument("--api", default="v1,v2", help="which APIs: v1, v2 or both")
    parser.add_argument("--calls", type=int, default=20000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--images", type=int, default=1, help="images per request")
    args = parser.parse_args()
    settings = Settings.model_validate(
        {"models_dir": args.models_dir, "default_model": args.model, "metrics_port": -1}
    )
    server = Server(settings)
    server.repository.load_all()
    model = server.repository.get(args.model)
    answer = model.predict(np.zeros((args.images, *model.input_shape), np.float32))
    # A bound method, as the engine holds it (weakly).
    model.predict = types.MethodType(lambda self, pixels: answer, model)  # type: ignore[method-assign]
    for api, (call, request) in calls(server, args.model, args.images).items():
        if api in args.api.split(","):
            timings = await measure(call, request, args.calls, args.rounds)
            median = statistics.median(timings)
            print(f"{api}: {min(timings):.2f} µs per call (min; median {median:.2f}) "
                  f"over {args.rounds} x {args.calls} calls")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
