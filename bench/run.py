"""`make bench`: convserve's per-call cost against the no-op server, same run, same load.

    .venv/bin/python bench/run.py [--models-dir models] [--rounds 3] [--only TEXT]
                                  [--profile out.txt] [-- extra convserve serve flags]

h2load replays the bytes the client sends for each case against three servers started
together: the no-op server (`ceiling.py`: the request is not decoded, the answer is empty),
`ceiling.py --responses` (fixed answers of convserve's size, for Predict and ModelInfer) and
`convserve serve` with the given flags (none: the defaults). The REST cases (`--only REST`)
replay an Open Inference Protocol infer over HTTP/1.1 (`h2load --h1`, a connection per call in
flight) against convserve's HTTP door and the no-op HTTP server (`http_ceiling.py`: the body
is read, not decoded; the answer is fixed JSON of convserve's size). Rounds alternate between
the servers, each measured run preceded by a settling run of a fifth of its requests, and each
figure is the median over the rounds. Latency is h2load's own summary (its mean): a
per-request log costs the load generator time on every request and squeezes every ratio
toward 1, so p50/p99 come from the settling runs, which are logged, never from a measured one.

For each case it prints req/s, images/s, mean latency, p50/p99 (logged settling runs), the ratio to
the no-op server (mean latency at one call in flight, req/s otherwise) and errors (h2load
failures, non-2xx and, for convserve, non-OK gRPC codes from its metrics), then convserve's
RSS and its time from process start to SERVING. Numbers, not a test.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    answers_by_code,
    free_port,
    grpc_frame,
    process_rss_mb,
    rss_mb,
    start_ceiling,
    start_convserve,
    start_http_ceiling,
    start_pyvoy,
    stop,
)
from google.protobuf.message import Message

from client.client import feature_map_request, predict_request
from convserve.api.pb.inference import grpc_predict_v2_pb2 as v2
from convserve.fashion_mnist import load

PATHS = {
    "Predict": "/convserve.v1.ConvServe/Predict",
    "ModelInfer": "/inference.GRPCInferenceService/ModelInfer",
    "FeatureMap": "/convserve.v1.ConvServe/FeatureMap",
    "REST": "/v2/models/{model}/infer",  # the Open Inference Protocol's, over HTTP/1.1
}
ONE = (1, 1, 3000)  # clients, streams per client, requests: one call in flight
SIXTY_FOUR = (4, 16, 30000)  # 64 in flight
H1_SIXTY_FOUR = (64, 1, 30000)  # HTTP/1.1: one call at a time per connection


@dataclass(frozen=True)
class Case:
    method: str
    images: int
    clients: int
    streams: int  # per client: calls in flight = clients × streams
    requests: int
    placement: bool = False  # a connection-placement case: its shape is in its name

    @property
    def http(self) -> bool:
        """Over HTTP/1.1 to the HTTP door, rather than gRPC."""
        return self.method == "REST"

    @property
    def name(self) -> str:
        name = f"{self.method} {self.images} img c{self.clients * self.streams}"
        return f"{name} {self.clients}x{self.streams}" if self.placement else name


CASES = (
    Case("Predict", 1, *ONE),
    Case("Predict", 1, *SIXTY_FOUR),
    Case("ModelInfer", 1, *ONE),
    Case("ModelInfer", 1, *SIXTY_FOUR),
    # 64 in flight over other numbers of connections: SO_REUSEPORT places connections, not
    # calls, on the workers (one connection reaches one worker).
    Case("Predict", 1, 16, 4, 30000, placement=True),
    Case("Predict", 1, 1, 64, 30000, placement=True),
    Case("ModelInfer", 1, 16, 4, 30000, placement=True),
    Case("ModelInfer", 1, 1, 64, 30000, placement=True),
    Case("FeatureMap", 1, *ONE),
    Case("FeatureMap", 1, 4, 16, 10000),
    Case("Predict", 64, 2, 4, 3000),
    Case("Predict", 64, 4, 16, 3000),
    Case("REST", 1, *ONE),
    Case("REST", 1, *H1_SIXTY_FOUR),
    Case("REST", 64, 1, 1, 3000),
    Case("REST", 64, 64, 1, 3000),
)


@dataclass(frozen=True)
class Convserve:
    """One convserve server of the run."""

    name: str
    flags: list[str]
    process: subprocess.Popen[bytes]
    target: str  # gRPC
    http: str
    metrics_port: int
    to_serving: float  # seconds from start to SERVING


@dataclass
class Result:
    requests_per_s: float
    mean_ms: float
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    errors: int = 0


@dataclass(frozen=True)
class Request:
    """What h2load sends for a case: the body (a file), the URL's path and the headers."""

    body: Path
    path: str
    headers: tuple[str, ...]


def request_body(case: Case, directory: Path, model: str = "fashion") -> Request:
    """The request the client sends for `case`, of uint8 Fashion-MNIST test images: a gRPC
    frame, or a REST infer (1 image: JSON data; more: the binary extension both ways, as
    tritonclient's binary_data: JSON's numbers would be mostly JSON parsing)."""
    path = directory / f"{case.method}-{case.images}.bin"
    if not case.http:
        path.write_bytes(grpc_frame(request_message(case).SerializeToString()))
        return Request(path, PATHS[case.method], ("content-type: application/grpc", "te: trailers"))
    images = load("test", limit=case.images).images
    tensor: dict[str, Any] = {"name": "images", "datatype": "UINT8", "shape": list(images.shape)}
    url = PATHS[case.method].format(model=model)
    if case.images == 1:
        tensor["data"] = images.ravel().tolist()
        path.write_bytes(json.dumps({"inputs": [tensor]}, separators=(",", ":")).encode())
        return Request(path, url, ("content-type: application/json",))
    tensor["parameters"] = {"binary_data_size": images.nbytes}
    binary = {"inputs": [tensor], "parameters": {"binary_data_output": True}}  # as tritonclient
    head = json.dumps(binary, separators=(",", ":")).encode()
    path.write_bytes(head + images.tobytes())
    headers = (
        "content-type: application/octet-stream",
        f"inference-header-content-length: {len(head)}",
    )
    return Request(path, url, headers)


def request_message(case: Case) -> Message:
    """The gRPC request message of a gRPC case."""
    images = load("test", limit=case.images).images
    message: Message
    if case.method == "Predict":
        message = predict_request(images, None, None, 3)
    elif case.method == "FeatureMap":
        message = feature_map_request(images, None, False, None, None)
    else:
        message = infer = v2.ModelInferRequest(raw_input_contents=[images.tobytes()])
        infer.inputs.add(name="images", datatype="UINT8", shape=images.shape)
    return message


def _milliseconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def h2load(
    target: str, case: Case, request: Request, requests: int, log: Path | None = None
) -> Result:
    """One h2load run of `requests` calls; with `log`, p50/p99 from its per-request log."""
    command = [
        "h2load", f"--requests={requests}", f"--clients={case.clients}",
        f"--max-concurrent-streams={case.streams}", f"--data={request.body}",
        *(f"--header={header}" for header in request.headers),
        *(["--h1"] if case.http else []), f"http://{target}{request.path}",
    ]  # fmt: skip
    if log is not None:
        log.unlink(missing_ok=True)  # h2load appends to its log file
        command.append(f"--log-file={log}")
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", output)
    counts = re.search(r"requests: .* (\d+) failed, (\d+) errored, (\d+) timeout", output)
    codes = re.search(r"status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", output)
    assert rate and counts and codes and mean, output
    result = Result(
        float(rate.group(1)),
        _milliseconds(mean.group(1)),
        errors=sum(int(n) for n in (*counts.groups(), *codes.groups())),
    )
    if log is not None and log.stat().st_size:
        ms = np.loadtxt(log, usecols=2, ndmin=1) / 1000
        result.p50_ms, result.p99_ms = (float(p) for p in np.percentile(ms, [50, 99]))
    return result


def grpc_errors(metrics_port: int, method: str) -> int:
    """`method` calls convserve answered with a non-OK gRPC status, so far (h2load sees
    HTTP 200 for those). CANCELLED is not counted: h2load resets streams when it stops."""
    codes = answers_by_code(metrics_port, method)
    return codes.total() - codes["OK"] - codes["CANCELLED"]


def no_errors() -> int:
    return 0


def median(results: list[Result], logged: list[Result]) -> Result:
    """Each figure's median over the rounds: req/s and mean from the measured runs, p50/p99
    from the logged settling runs; the errors of all."""
    return Result(
        statistics.median(r.requests_per_s for r in results),
        statistics.median(r.mean_ms for r in results),
        statistics.median(r.p50_ms for r in logged),
        statistics.median(r.p99_ms for r in logged),
        sum(r.errors for r in [*results, *logged]),
    )


def profile(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy on the server and its workers until stopped: collapsed stacks for `top_frames`."""
    return subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--subprocesses", "--rate", "500",
         "--format", "raw", "--output", str(output), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


Frames = list[tuple[str, float]]
# Frames of a request's own work, for the profile's inclusive times.
OURS = re.compile(r"\((service/(?!main|__main__)|convserve/)|onnxruntime")


def top_frames(raw: Path, count: int = 12) -> tuple[Frames, Frames]:
    """(leaf frames by share of samples: self time; convserve's and ONNX Runtime's frames by
    share of the samples they are in: inclusive time)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit():  # a line cut short when py-spy was stopped
            continue
        frames = stack.split(";")[2:]  # not the process and thread
        own[frames[-1].split(" (")[0] if frames else "(idle)"] += int(samples)
        for frame in {frame for frame in frames if OURS.search(frame)}:
            inclusive[frame.split(" (")[0]] += int(samples)
    overall = sum(own.values()) or 1
    own_top, inclusive_top = (
        [(frame, n / overall) for frame, n in counter.most_common(count)]
        for counter in (own, inclusive)
    )
    return own_top, inclusive_top


def measure(
    case: Case, servers: dict[str, str], request: Request, rounds: int, log: Path,
    convserve_errors: dict[str, Callable[[], int]],
) -> dict[str, Result]:  # fmt: skip
    """Each server's figures for `case` over `rounds` rounds, alternating between the servers
    (so drift hits them alike): a settling run, logged for p50/p99, then the measured run."""
    runs: dict[str, list[Result]] = {name: [] for name in servers}
    logged: dict[str, list[Result]] = {name: [] for name in servers}
    for _ in range(rounds):
        for name, address in servers.items():
            errors = convserve_errors.get(name, no_errors)
            before = errors()
            logged[name].append(h2load(address, case, request, case.requests // 5, log))
            runs[name].append(h2load(address, case, request, case.requests))
            runs[name][-1].errors += errors() - before
    return {name: median(runs[name], logged[name]) for name in servers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--model", default="fashion")
    parser.add_argument("--rounds", type=int, default=3, help="measured runs per case and server")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this")
    parser.add_argument(
        "--profile", type=Path, help="py-spy convserve in an extra run of the first case: PATH.txt"
    )
    parser.add_argument(
        "--versus", action="append", default=[], metavar="FLAGS",
        help="also measure convserve with these flags instead (e.g. '--event-loop asyncio'), in "
        "the same rounds: a lever's before and after in one run (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--pyvoy", action="store_true",
        help="also measure the pyvoy prototype (bench/pyvoy_front.py) on Predict and ModelInfer",
    )  # fmt: skip
    parser.add_argument("server_args", nargs="*", help="extra `convserve serve` flags, after --")
    args = parser.parse_args()
    for tool in ("h2load", *(["py-spy"] if args.profile else [])):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: make bench installs it")

    cases = [case for case in CASES if args.only in case.name]
    ceilings: list[subprocess.Popen[bytes]] = []
    grpc_noop = fixed_target = http_noop = ""
    if any(not case.http for case in cases):
        noop, grpc_noop = start_ceiling()
        fixed, fixed_target = start_ceiling("--responses")
        ceilings += (noop, fixed)
    if any(case.http for case in cases):
        http, http_noop = start_http_ceiling()
        ceilings.append(http)
    # Each convserve: its name in the table, flags, process, gRPC and HTTP targets, metrics port.
    convserves: list[Convserve] = []
    try:
        for name, flags in [("convserve", args.server_args)] + [
            (f"versus {i + 1}", [*args.server_args, *text.split()])
            for i, text in enumerate(args.versus)
        ]:
            http_port = free_port()
            process, target, metrics_port, to_serving = start_convserve(
                args.models_dir, args.model, *flags, metrics=True, http_port=http_port
            )
            convserves.append(Convserve(name, flags, process, target, f"127.0.0.1:{http_port}",
                                        metrics_port, to_serving))  # fmt: skip
    except BaseException:  # convserve did not start (sys.exit): neither do the others stay
        for process in (*ceilings, *(c.process for c in convserves)):
            stop(process)
        raise
    if args.pyvoy:
        pyvoy, pyvoy_target = start_pyvoy(args.models_dir, args.model)
        ceilings.append(pyvoy)
    server, target, http_target = convserves[0].process, convserves[0].target, convserves[0].http
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            log = Path(tmp) / "h2load.log"
            requests = {case: request_body(case, Path(tmp), args.model) for case in cases}
            for case, sent in requests.items():
                errors: dict[str, Callable[[], int]]
                if case.http:  # every error is an HTTP status, which h2load counts
                    servers = {"no-op": http_noop} | {c.name: c.http for c in convserves}
                    errors = {c.name: no_errors for c in convserves}
                else:
                    servers = {"no-op": grpc_noop} | {c.name: c.target for c in convserves}
                    if case.method in ("Predict", "ModelInfer"):
                        servers["responses"] = fixed_target
                        if args.pyvoy:
                            servers["pyvoy"] = pyvoy_target
                    errors = {
                        c.name: functools.partial(grpc_errors, c.metrics_port, case.method)
                        for c in convserves
                    }
                rows.append((case, measure(case, servers, sent, args.rounds, log, errors)))
            if args.profile and cases:
                first = cases[0]
                spy = profile(server.pid, args.profile)
                h2load(
                    http_target if first.http else target,
                    first,
                    requests[first],
                    first.requests * 2,
                )
                spy.send_signal(2)  # SIGINT: py-spy writes what it sampled
                spy.wait()
        memory = {
            c.name: (rss_mb(c.process.pid), process_rss_mb(c.process.pid)) for c in convserves
        }
    finally:
        for process in (*(c.process for c in convserves), *ceilings):
            stop(process)

    print(f"\n{'case':22s} {'server':9s} {'req/s':>7s} {'img/s':>7s} {'mean ms':>7s} "
          f"{'p50 ms':>7s} {'p99 ms':>7s} {'ratio':>6s} {'errors':>6s}")  # fmt: skip
    for case, results in rows:
        base = results["no-op"]
        for name, result in results.items():
            if case.clients * case.streams == 1:  # latency-bound: the ratio of mean latencies
                ratio = result.mean_ms / base.mean_ms
            else:  # throughput-bound: the ratio of request rates
                ratio = result.requests_per_s / base.requests_per_s
            print(
                f"{case.name:22s} {name:9s} {result.requests_per_s:7.0f} "
                f"{result.requests_per_s * case.images:7.0f} {result.mean_ms:7.3f} "
                f"{result.p50_ms:7.3f} {result.p99_ms:7.3f} {ratio:6.2f} {result.errors:6d}"
            )
    print(
        f"ratio: ÷ the no-op server's (gRPC; HTTP for REST) mean latency at c1, its req/s "
        f"otherwise; median of {args.rounds} rounds; p50/p99 from the logged settling runs"
    )
    for c in convserves:
        rss, processes = memory[c.name]
        print(
            f"{c.name}: convserve serve {' '.join(c.flags) or '(defaults)'}: start to SERVING "
            f"{c.to_serving:.2f} s, RSS after the run {rss:.0f} MB "
            f"({', '.join(f'{mb:.0f}' for mb in processes)} MB per process)"
        )
    if args.profile and cases:
        own, inclusive = top_frames(args.profile)
        print(f"\npy-spy, convserve under {cases[0].name} ({args.profile}):")
        print("self time:")
        for frame, share in own:
            print(f"{share:6.1%}  {frame}")
        print("inclusive (convserve's and ONNX Runtime's frames):")
        for frame, share in inclusive:
            print(f"{share:6.1%}  {frame}")


if __name__ == "__main__":
    main()
