"""`make bench`: convserve against the no-op gRPC ceiling, same run, same load (h2load).

    .venv/bin/python bench/run.py [--models-dir models] [--seconds 10] [--rounds 2]
                                  [--profile out.txt] [-- extra convserve serve flags]

Each case runs `rounds` times against each server, alternating, and keeps each server's
fastest run. For each case it prints req/s, images/s, mean/p50/p99 latency, the ratio to
the ceiling and errors (h2load failures plus non-OK gRPC codes counted by the server, over
all rounds), then the server's RSS and its time from process start to SERVING. Numbers,
not a test.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import grpc_frame, process_rss_mb, rss_mb, start_ceiling, start_convserve, stop

from client.client import predict_request
from convserve.fashion_mnist import load

PATH = "/convserve.v1.ConvServe/Predict"


@dataclass(frozen=True)
class Case:
    name: str
    dtype: str
    images: int
    clients: int
    streams: int  # per client: concurrency = clients × streams

    @property
    def concurrency(self) -> int:
        return self.clients * self.streams


CASES = (
    Case("1 img uint8  c1", "uint8", 1, 1, 1),
    Case("1 img f32    c1", "float32", 1, 1, 1),
    Case("1 img uint8  c64", "uint8", 1, 4, 16),
    Case("1 img f32    c64", "float32", 1, 4, 16),
    Case("64 img uint8 c8", "uint8", 64, 2, 4),
    Case("64 img uint8 c64", "uint8", 64, 4, 16),
)


@dataclass
class Result:
    requests_per_s: float
    mean_ms: float
    p50_ms: float
    p99_ms: float
    errors: int


def request_file(case: Case, directory: Path) -> Path:
    images = load("test", limit=case.images).images.astype(case.dtype)
    path = directory / f"{case.dtype}-{case.images}.bin"
    path.write_bytes(grpc_frame(predict_request(images, None, None, 3).SerializeToString()))
    return path


def h2load(target: str, case: Case, body: Path, seconds: float, log: Path) -> Result:
    log.unlink(missing_ok=True)  # h2load appends to its log file
    command = [
        "h2load", f"--duration={seconds:g}", "--warm-up-time=2", f"--clients={case.clients}",
        f"--max-concurrent-streams={case.streams}", f"--data={body}", f"--log-file={log}",
        "--header=content-type: application/grpc", "--header=te: trailers",
        f"http://{target}{PATH}",
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", output).group(1))  # type: ignore[union-attr]
    counts = re.search(r"requests: .* (\d+) failed, (\d+) errored, (\d+) timeout", output)
    assert counts is not None, output
    micros = np.loadtxt(log, usecols=2, ndmin=1) if log.stat().st_size else np.array([np.nan])
    statuses = np.loadtxt(log, usecols=1, ndmin=1) if log.stat().st_size else np.array([])
    errors = sum(int(n) for n in counts.groups()) + int((statuses != 200).sum())
    ms = micros / 1000
    return Result(
        rate, float(ms.mean()), float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), errors
    )


def best(results: list[Result]) -> Result:
    """The fastest round (noise on a shared machine only ever slows a run down), with the
    errors of every round."""
    fastest = max(results, key=lambda result: result.requests_per_s)
    return Result(**{**vars(fastest), "errors": sum(result.errors for result in results)})


def grpc_errors(metrics_ports: list[int]) -> int:
    """Predict calls the server answered with a non-OK gRPC status, so far.

    CANCELLED is not counted: h2load cancels the streams still in flight when its time is up.
    """
    text = ""
    for port in metrics_ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
            text += page.read().decode()
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith("convserve_requests_total{")
            and 'method="Predict"' in line
            and not re.search('code="(OK|CANCELLED)"', line)
        ):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def profile(pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes]:
    """py-spy: a flame graph if `output` ends in .svg, else collapsed stacks for `top_frames`."""
    kind = "flamegraph" if output.suffix == ".svg" else "raw"
    return subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--subprocesses", "--duration", str(int(seconds)),
         "--rate", "200", "--format", kind, "--output", str(output), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def top_frames(raw: Path, count: int = 15) -> list[tuple[str, float]]:
    """Leaf frames by share of samples (self time)."""
    totals: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        totals[stack.split(";")[-1]] += int(samples)
    overall = sum(totals.values()) or 1
    return [(frame, n / overall) for frame, n in totals.most_common(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--model", default="fashion")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument(
        "--rounds", type=int, default=2, help="runs per case and server, alternating; best kept"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy the server under the c64 uint8 load: PATH.svg (flame graph) or PATH.txt",
    )
    parser.add_argument("--only", default="", help="run only the cases whose name contains this")
    parser.add_argument("server_args", nargs="*", help="extra `convserve serve` flags, after --")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        sys.exit("h2load not found: apt-get install -y nghttp2-client (make bench does)")

    ceiling, ceiling_target = start_ceiling()
    server, target, metrics_ports, to_serving = start_convserve(
        args.models_dir, args.model, *args.server_args, metrics=True
    )
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            log = directory / "h2load.log"
            for case in [case for case in CASES if args.only in case.name]:
                body = request_file(case, directory)
                ceiling_runs, convserve_runs = [], []
                for round_ in range(args.rounds):  # alternating, so drift hits both alike
                    ceiling_runs.append(h2load(ceiling_target, case, body, args.seconds, log))
                    before = grpc_errors(metrics_ports)
                    spy = None
                    if args.profile and case.name == "1 img uint8  c64" and round_ == 0:
                        spy = profile(server.pid, args.seconds + 2, args.profile)
                    convserve_runs.append(h2load(target, case, body, args.seconds, log))
                    convserve_runs[-1].errors += grpc_errors(metrics_ports) - before
                    if spy is not None:
                        spy.wait()
                rows.append((case, best(ceiling_runs), best(convserve_runs)))
        rss = rss_mb(server.pid)
        processes = process_rss_mb(server.pid)
    finally:
        stop(server)
        stop(ceiling)

    print(f"\n{'case':18s} {'server':9s} {'req/s':>9s} {'img/s':>9s} {'mean ms':>8s} "
          f"{'p50 ms':>7s} {'p99 ms':>7s} {'ratio':>6s} {'errors':>6s}")  # fmt: skip
    for case, base, ours in rows:
        for label, result in (("ceiling", base), ("convserve", ours)):
            if case.concurrency == 1:  # latency-bound: the ratio of mean latencies
                ratio = result.mean_ms / base.mean_ms
            else:  # throughput-bound: the ratio of request rates
                ratio = result.requests_per_s / base.requests_per_s
            print(
                f"{case.name:18s} {label:9s} {result.requests_per_s:9.0f} "
                f"{result.requests_per_s * case.images:9.0f} {result.mean_ms:8.3f} "
                f"{result.p50_ms:7.3f} {result.p99_ms:7.3f} {ratio:6.2f} {result.errors:6d}"
            )
    print("ratio: mean latency ÷ ceiling's at c1, req/s ÷ ceiling's otherwise")
    print(
        f"convserve: start to SERVING {to_serving:.2f} s, RSS after the run {rss:.0f} MB "
        f"({', '.join(f'{mb:.0f}' for mb in processes)} MB per process)"
    )
    if args.profile and args.profile.suffix != ".svg":
        print(f"\nprofile of the c64 uint8 case ({args.profile}), self time:")
        for frame, share in top_frames(args.profile):
            print(f"{share:6.1%}  {frame}")


if __name__ == "__main__":
    main()
