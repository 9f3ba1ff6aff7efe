"""`convserve loadtest` checked against h2load, and the generator's own ceiling.

    .venv/bin/python bench/loadtest_check.py --models-dir models [--seconds 10]

1. One call at a time against convserve, 1 and 64 images per call: h2load's mean latency and
   loadtest's, same run, `--rounds` times alternating; each tool's best round is kept (noise
   only slows a run down).
2. The largest rate loadtest generates here, with --processes 1 and 2: closed loop at
   concurrency 64 against the no-op ceiling server (bench/ceiling.py), so the generator,
   not the server, is the limit.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import start_ceiling, start_convserve, stop
from run import Case, h2load, request_body


def loadtest(target: str, seconds: float, *args: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        subprocess.run(
            [sys.executable, "-m", "convserve", "loadtest", "--target", target,
             "--duration", str(seconds), "--warmup", "2", "--json", str(out), *args],
            check=True, capture_output=True,
        )  # fmt: skip
        steps: list[dict[str, Any]] = json.loads(out.read_text())["steps"]
    return steps[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--model", default="fashion")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    server, target, _, _ = start_convserve(args.models_dir, args.model)
    try:
        for images in (1, 64):
            references, runs = [], []
            with tempfile.TemporaryDirectory() as tmp:
                case = Case("Predict", images, 1, 1, 3000)
                body = request_body(case, Path(tmp))
                for _ in range(args.rounds):
                    references.append(h2load(target, case, body, case.requests))
                    runs.append(loadtest(target, args.seconds, "--concurrency", "1",
                                         "--batch", str(images)))  # fmt: skip
            reference = min(references, key=lambda result: result.mean_ms)
            ours = min(runs, key=lambda step: float(step["latency_ms"]["mean"]))
            ratio = ours["latency_ms"]["mean"] / reference.mean_ms
            print(f"c1, {images} image(s) per call: h2load mean {reference.mean_ms:.3f} ms "
                  f"({reference.requests_per_s:.0f} req/s); loadtest mean "
                  f"{ours['latency_ms']['mean']:.3f} ms ({ours['throughput_rps']:.0f} req/s); "
                  f"ratio {ratio:.2f}")  # fmt: skip
    finally:
        stop(server)

    ceiling, target = start_ceiling()
    try:
        for processes in (1, 2):
            step = loadtest(target, args.seconds, "--concurrency", "64",
                            "--processes", str(processes))  # fmt: skip
            rate, p50, cpu = (
                step["throughput_rps"],
                step["latency_ms"]["p50"],
                step["generator_cpu"],
            )
            print(f"generator ceiling, --processes {processes}: {rate:.0f} req/s "
                  f"(c64 against the no-op server, p50 {p50:.2f} ms; generator CPU {cpu:.0%} "
                  f"of its processes)")  # fmt: skip
    finally:
        stop(ceiling)


if __name__ == "__main__":
    main()
