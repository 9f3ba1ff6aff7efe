"""Overload: offer `--factor` × the sustainable request rate and report how the server
degrades: answers by status code, latency, memory.

Sustainable = what h2load gets through with 64 requests in flight (closed loop, this run,
logged for its p99).
Then h2load sends at a fixed rate, factor × that, whatever the answers (`--rps` per client,
up to 256 requests in flight per client), each request with a `--timeout` deadline
(grpc-timeout). Status codes come from the server's own counters (calls gRPC refused before
the server took them up are the difference to what h2load sent); latencies from h2load.

    .venv/bin/python bench/overload.py --models-dir models --images 64 [-- serve flags]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
from common import answers_by_code, rss_mb, start_convserve
from run import PATHS, Case, h2load, request_body

CLIENTS = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--model", default="fashion")
    parser.add_argument("--images", type=int, default=64, help="images per request")
    parser.add_argument("--factor", type=float, default=4.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=2.0, help="each request's deadline, s")
    parser.add_argument("server_args", nargs="*", help="extra `convserve serve` flags, after --")
    args = parser.parse_args()

    process, target, metrics_port, _ = start_convserve(
        args.models_dir, args.model, *args.server_args, metrics=True
    )
    peak = [rss_mb(process.pid)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            peak[0] = max(peak[0], rss_mb(process.pid))

    try:
        with tempfile.TemporaryDirectory() as tmp:
            case = Case("Predict", args.images, 4, 16, 3000 if args.images > 1 else 30000)
            predict = request_body(case, Path(tmp))
            body = predict.body
            start = answers_by_code(metrics_port, "Predict")
            sustainable = h2load(target, case, predict, case.requests, Path(tmp) / "log")
            rss_before, before = rss_mb(process.pid), answers_by_code(metrics_port, "Predict")
            closed = before - start  # h2load counts a refusal as an answer: the server does not
            ok_rate = sustainable.requests_per_s * closed["OK"] / max(closed.total(), 1)
            rate = args.factor * ok_rate
            sampler = threading.Thread(target=sample)
            sampler.start()
            log = Path(tmp) / "overload.log"
            command = [
                "h2load", f"--duration={args.seconds:g}", f"--clients={CLIENTS}",
                f"--rps={rate / CLIENTS:.2f}", "--max-concurrent-streams=256", f"--data={body}",
                f"--log-file={log}", "--header=content-type: application/grpc",
                "--header=te: trailers", f"--header=grpc-timeout: {int(args.timeout * 1000)}m",
                f"http://{target}{PATHS['Predict']}",
            ]  # fmt: skip
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            stop.set()
            sampler.join()
            sent = int(re.search(r"requests: (\d+) total", output).group(1))  # type: ignore[union-attr]
            ms = np.loadtxt(log, usecols=2, ndmin=1) / 1000
        codes = answers_by_code(metrics_port, "Predict") - before
        rss_after = rss_mb(process.pid)
    finally:
        stop.set()
        process.terminate()
        process.wait(timeout=60)

    p50, p99, worst = np.percentile(ms, [50, 99, 100])
    flags = " ".join(args.server_args) or "(defaults)"
    print(f"server flags: {flags}; {args.images} images/request")
    print(f"sustainable (64 in flight): {ok_rate:.0f} OK req/s, p99 {sustainable.p99_ms:.1f} ms, "
          f"answers by code {dict(closed.most_common())}")  # fmt: skip
    print(f"offered {rate:.0f} req/s ({args.factor:g}x) for {args.seconds:g} s, deadline "
          f"{args.timeout:g} s: {sent} sent, {len(ms)} answered")  # fmt: skip
    print(f"answers by code (server): {dict(codes.most_common())}; OK = "
          f"{codes['OK'] / args.seconds:.0f} req/s")  # fmt: skip
    print(f"latency of every answer: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms")
    print(f"refused by gRPC before the server took them up (CANCELLED): {sent - codes.total()}")
    print(f"server RSS: {rss_before:.0f} MB before, {peak[0]:.0f} MB peak, "
          f"{rss_after:.0f} MB after")  # fmt: skip


if __name__ == "__main__":
    main()
