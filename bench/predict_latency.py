"""Start `convserve serve`, then print time to SERVING, server RSS and single-image Predict latency.

    .venv/bin/python bench/predict_latency.py --models-dir models [--requests 2000]

Numbers, not a test: run it on an idle machine and compare runs made on the same machine.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from client import Client
from client.errors import ConvserveError
from training.data import load


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--model", default="fashion")
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()

    port = _free_port()
    target = f"127.0.0.1:{port}"
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port),
         "--metrics-port", "-1", "--models-dir", str(args.models_dir),
         "--default-model", args.model, "--log-level", "WARNING"],
    )  # fmt: skip
    try:
        while True:  # poll with a fresh channel: no reconnect backoff while it starts listening
            try:
                with Client(target, timeout=1, retries=0) as client:
                    if client.health(args.model) == "SERVING":
                        break
            except ConvserveError:
                pass
            if server.poll() is not None:
                sys.exit(f"server exited with {server.returncode}")
            time.sleep(0.01)
        to_serving = time.perf_counter() - started
        rss_loaded = _rss_mb(server.pid)

        images = load("test", limit=args.requests).images
        latencies = []
        with Client(target) as client:
            for image in images[:50]:  # warm the connection
                client.predict(image[None])
            for image in images:
                begin = time.perf_counter()
                client.predict(image[None])
                latencies.append(time.perf_counter() - begin)
        ms = np.array(latencies) * 1000
        print(f"start to SERVING      {to_serving:8.2f} s")
        print(f"RSS after loading     {rss_loaded:8.1f} MB")
        print(f"RSS after requests    {_rss_mb(server.pid):8.1f} MB")
        p50, p99 = np.percentile(ms, [50, 99])
        print(
            f"Predict, 1 image, c1  n={len(ms)}  mean {ms.mean():.3f} ms  p50 {p50:.3f} ms"
            f"  p99 {p99:.3f} ms  max {ms.max():.3f} ms"
        )
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
