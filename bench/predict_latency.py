"""Single-image Predict latency as the Python client sees it, plus time to SERVING and RSS.

.venv/bin/python bench/predict_latency.py --models-dir models [--requests 2000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import rss_mb, start_convserve, stop

from client import Client
from convserve.fashion_mnist import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--model", default="fashion")
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()

    server, target, _, to_serving = start_convserve(args.models_dir, args.model)
    try:
        rss_loaded = rss_mb(server.pid)
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
        p50, p99 = np.percentile(ms, [50, 99])
        print(f"start to SERVING      {to_serving:8.2f} s")
        print(f"RSS after loading     {rss_loaded:8.1f} MB")
        print(f"RSS after requests    {rss_mb(server.pid):8.1f} MB")
        print(
            f"Predict, 1 image, c1  n={len(ms)}  mean {ms.mean():.3f} ms  p50 {p50:.3f} ms"
            f"  p99 {p99:.3f} ms  max {ms.max():.3f} ms"
        )
    finally:
        stop(server)


if __name__ == "__main__":
    main()
