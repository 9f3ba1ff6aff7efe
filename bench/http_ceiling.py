"""The no-op HTTP server: the cheapest aiohttp server that answers convserve's REST infer.

    .venv/bin/python bench/http_ceiling.py --port 8081 [--processes N]

`POST /v2/models/{model}/infer` reads the body without decoding it and answers with a fixed,
pre-encoded JSON answer of convserve's shape and size: probabilities for 1 image, or for 64
when the body is a 64-image request's size. Its figures are what the HTTP transport (aiohttp
on the default asyncio loop + HTTP/1.1 + this machine) carries at best, for `bench/run.py`'s
REST cases.

Like convserve's workers, it runs one process per CPU the server may use
(`service.cpus.available_cpus`), each listening on the same port with SO_REUSEPORT, each
pinned to its own CPU where convserve's would be (`service.cpus.worker_cpus`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import queue
import signal
import sys
from multiprocessing.queues import Queue

import numpy as np
from aiohttp import web

from service.cpus import available_cpus, worker_cpus

CLASSES = 10
LARGE_BODY = 10_000  # bytes: a 1-image JSON request is ~3 kB, a 64-image binary one ~50 kB


def infer_answer(images: int) -> bytes:
    """A REST infer answer as convserve's: uniform float32 probabilities as JSON numbers."""
    probabilities = np.full((images, CLASSES), 1 / CLASSES, np.float32)
    document = {
        "model_name": "fashion",
        "model_version": "1",
        "outputs": [
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": [images, CLASSES],
                "data": probabilities.ravel().tolist(),
            }
        ],
    }
    return json.dumps(document, separators=(",", ":")).encode()


def application() -> web.Application:
    small, large = infer_answer(1), infer_answer(64)

    async def infer(request: web.Request) -> web.Response:
        body = await request.read()
        answer = large if len(body) > LARGE_BODY else small
        return web.Response(body=answer, content_type="application/json")

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v2/models/{model}/infer", infer)
    app.router.add_post("/v2/models/{model}/versions/{version}/infer", infer)
    return app


async def serve(host: str, port: int, ready: Queue[int]) -> None:
    runner = web.AppRunner(application(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_port=True).start()
    ready.put(os.getpid())
    await asyncio.Event().wait()  # until SIGTERM


def process(host: str, port: int, cpu: int | None, ready: Queue[int]) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler
    asyncio.run(serve(host, port, ready))


def main() -> None:
    parser = argparse.ArgumentParser(description="the no-op HTTP ceiling server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument(
        "--processes", type=int, default=available_cpus(), help="default: one per CPU"
    )
    args = parser.parse_args()
    cpus = worker_cpus(args.processes)
    context = multiprocessing.get_context("fork")  # before any thread or loop exists
    ready: Queue[int] = context.Queue()
    children = [
        context.Process(
            target=process, args=(args.host, args.port, cpus[i] if cpus else None, ready)
        )
        for i in range(args.processes)
    ]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so `finally` stops the children
    try:
        for child in children:
            child.start()
        started = 0
        while started < len(children):
            try:
                ready.get(timeout=0.1)
                started += 1
            except queue.Empty:
                if any(child.exitcode is not None for child in children):
                    sys.exit("a server process exited before serving")
        print(
            f"http ceiling serving on {args.host}:{args.port} ({args.processes} processes)",
            flush=True,
        )
        for child in children:
            child.join()
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()
        for child in children:
            child.join()


if __name__ == "__main__":
    main()
