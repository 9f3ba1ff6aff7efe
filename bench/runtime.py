"""The served model's own cost: `service.model.Model` on ONNX Runtime, no gRPC.

    .venv/bin/python bench/runtime.py [--models-dir models] [--model fashion] [--threads 1,2]

Prints, per ONNX Runtime intra-op thread count, the time of Predict for one image and per
image in a batch of 64 (median of many runs, real test images), and the process's peak RSS.
Numbers, not a test.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from convserve.fashion_mnist import load
from service.model import Model


def per_call_us(function: Callable[[], object], runs: int) -> float:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--model", default="fashion")
    parser.add_argument("--threads", default="1,2", help="intra-op thread counts to measure")
    args = parser.parse_args()
    versions = sorted((args.models_dir / args.model).glob("[0-9]*"), key=lambda p: int(p.name))
    images = load("test", limit=64).images.astype(np.float32)[..., None]
    print(f"{'threads':>7s} {'1 image µs':>11s} {'per image of 64 µs':>19s}")
    for threads in map(int, args.threads.split(",")):
        model = Model.load(versions[-1], threads=threads)
        one = per_call_us(lambda: model.predict(images[:1]), 2000)  # noqa: B023
        batch = per_call_us(lambda: model.predict(images), 500) / 64  # noqa: B023
        print(f"{threads:7d} {one:11.1f} {batch:19.2f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tensorflow = "tensorflow" in sys.modules
    print(f"peak RSS {peak:.0f} MB; TensorFlow loaded: {tensorflow}")


if __name__ == "__main__":
    main()
