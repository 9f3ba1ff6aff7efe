"""Where a call's CPU goes: convserve against the no-op gRPC server, in µs of CPU per call.

    .venv/bin/python bench/cpu_per_call.py [--case "Predict 1 img c64"] [--perf] [-- FLAGS]

Each server (the no-op server, `bench/ceiling.py`; convserve with `convserve serve` FLAGS)
takes the same h2load load of one of `bench/run.py`'s cases, in turn, for a few rounds. The
CPU time of the server's whole process tree (workers and every thread: gRPC's, ONNX
Runtime's) over the run, divided by the calls answered, is its cost per call, whatever the
connections' placement did to its rate. With `--perf` (Debian's `linux-perf`), one more run
of each is sampled by `perf record`, and the cost is split by the library the CPU was in:
the kernel, the Python interpreter (every line of Python: grpc.aio's, convserve's), gRPC's
Cython core, ONNX Runtime, numpy, protobuf, the event loop.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import process_tree, start_ceiling, start_convserve, stop
from run import CASES, h2load, request_body

PERF_HZ = 2000


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of `pid`'s process tree so far (every thread)."""
    ticks = 0
    for process in process_tree(pid):
        fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def by_library(output: Path, calls: int) -> dict[str, float]:
    """µs per call in each library (perf's DSO), from a `perf record -F PERF_HZ` file."""
    report = subprocess.run(
        ["perf", "report", "-i", str(output), "--sort", "dso", "--stdio", "-n"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    shares = {}
    for line in report.splitlines():
        match = re.match(r"\s+[\d.]+%\s+(\d+)\s+(\S+)", line)
        if match:
            library = re.sub(r"\.cpython-.*|\.so.*|\.abi3.*", "", match.group(2))
            shares[library] = int(match.group(1)) / PERF_HZ / calls * 1e6
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--model", default="fashion")
    parser.add_argument("--case", default="Predict 1 img c64", help="one of bench/run.py's")
    parser.add_argument("--requests", type=int, default=20000, help="calls per measured run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--perf", action="store_true", help="split by library (perf record)")
    parser.add_argument("server_args", nargs="*", help="`convserve serve` flags, after --")
    args = parser.parse_args()
    case = next((c for c in CASES if c.name == args.case and not c.http), None)
    if case is None:
        sys.exit(f"--case: one of {', '.join(c.name for c in CASES if not c.http)}")
    for tool in ("h2load", *(["perf"] if args.perf else [])):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (Debian: nghttp2-client, linux-perf)")
    servers = {"no-op": start_ceiling()}
    try:
        process, target, _, _ = start_convserve(args.models_dir, args.model, *args.server_args)
        servers["convserve"] = (process, target)
        costs: dict[str, list[float]] = {name: [] for name in servers}
        libraries: dict[str, dict[str, float]] = {}
        with tempfile.TemporaryDirectory() as tmp:
            request = request_body(case, Path(tmp), args.model)
            for _ in range(args.rounds):
                for name, (process, target) in servers.items():
                    h2load(target, case, request, args.requests // 10)  # settle
                    before = cpu_seconds(process.pid)
                    h2load(target, case, request, args.requests)
                    costs[name].append((cpu_seconds(process.pid) - before) / args.requests)
            for name, (process, target) in servers.items() if args.perf else ():
                output = Path(tmp) / f"{name}.perf"
                pids = ",".join(map(str, process_tree(process.pid)))
                perf = subprocess.Popen(
                    ["perf", "record", "-F", str(PERF_HZ), "-o", str(output), "-p", pids],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                time.sleep(0.5)  # perf attaches
                h2load(target, case, request, args.requests)
                perf.send_signal(2)
                perf.wait()
                libraries[name] = by_library(output, args.requests)
    finally:
        for process, _ in servers.values():
            stop(process)
    print(f"{case.name}, convserve serve {' '.join(args.server_args) or '(defaults)'}")
    print("µs of CPU per call (server's process tree), each round:")
    for name, seconds in costs.items():
        print(f"  {name:10s} " + "  ".join(f"{s * 1e6:5.0f}" for s in seconds))
    if libraries:
        ours = libraries["convserve"]
        names = sorted(set().union(*libraries.values()), key=lambda n: -ours.get(n, 0))
        print(f"\nµs per call by library (perf):\n  {'':34s} {'no-op':>7s} {'convserve':>9s}")
        for library in names:
            values = [libraries[server].get(library, 0.0) for server in servers]
            if max(values) >= 1:
                print(f"  {library:34s} {values[0]:7.1f} {values[1]:9.1f}")
        totals = [sum(libraries[server].values()) for server in servers]
        print(f"  {'all':34s} {totals[0]:7.1f} {totals[1]:9.1f}")


if __name__ == "__main__":
    main()
