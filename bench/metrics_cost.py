"""What a call's metric updates cost a worker: one process, against `--workers` (multiprocess).

    .venv/bin/python bench/metrics_cost.py [--calls 200000] [--rounds 5]

With `--workers N` each worker writes its metrics to memory-mapped files that the supervisor
reads at each scrape (prometheus_client's multiprocess mode); a server of one process keeps
them in memory. This runs the updates one Predict call makes (in flight up and down, the
request counter and latency, the batch's queue wait, inference time and size) on the server's
own metric objects, in a fresh process each way, and prints µs per call (median of rounds).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

ONE_CALL = """
import statistics, time
from service import metrics
inflight = metrics.INFLIGHT.labels("Predict")
rounds = []
for _ in range({rounds}):
    started = time.perf_counter()
    for _ in range({calls}):
        inflight.inc()
        metrics.QUEUE_WAIT.labels("fashion").observe(0.0001)
        metrics.INFERENCE_DURATION.labels("fashion").observe(0.0002)
        metrics.BATCH_SIZE.labels("fashion", "1").observe(1)
        metrics.REQUESTS.labels("fashion", "1", "Predict", "OK", "grpc").inc()
        metrics.REQUEST_DURATION.labels("fashion", "Predict", "grpc").observe(0.0003)
        inflight.dec()
    rounds.append((time.perf_counter() - started) / {calls} * 1e6)
print(statistics.median(rounds))
"""


def per_call(env: dict[str, str], calls: int, rounds: int) -> float:
    code = ONE_CALL.format(calls=calls, rounds=rounds)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return float(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    alone = per_call(env, args.calls, args.rounds)
    with tempfile.TemporaryDirectory() as files:
        workers = per_call({**env, "PROMETHEUS_MULTIPROC_DIR": files}, args.calls, args.rounds)
    print(f"one Predict's metric updates: {alone:.1f} µs in one process, {workers:.1f} µs in")
    print(f"a worker of --workers (multiprocess files): +{workers - alone:.1f} µs per call")


if __name__ == "__main__":
    main()
