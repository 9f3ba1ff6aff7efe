"""What the bench scripts share: starting servers, reading their RSS, framing gRPC requests."""

from __future__ import annotations

import collections
import functools
import os
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

from client import Client
from client.errors import ConvserveError
from service.cpus import available_cpus

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (the workers of --workers N)."""
    return sum(process_rss_mb(pid))


def process_tree(pid: int) -> list[int]:
    """A process, then each of its descendants (the workers of --workers N)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        for child in children:
            found += process_tree(int(child))
    return found


def process_rss_mb(pid: int) -> list[float]:
    """Resident memory of a process, then of each of its descendants."""
    return [
        int(line.split()[1]) / 1024
        for process in process_tree(pid)
        for line in Path(f"/proc/{process}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    ]


def answers_by_code(metrics_port: int, method: str) -> collections.Counter[str]:
    """`method` calls convserve has answered so far, by gRPC status code (every worker's)."""
    codes: collections.Counter[str] = collections.Counter()
    for line in _metrics_page(metrics_port).splitlines():
        if line.startswith("convserve_requests_total{") and f'method="{method}"' in line:
            code = re.search(r'code="(\w+)"', line).group(1)  # type: ignore[union-attr]
            codes[code] += int(float(line.rsplit(" ", 1)[1]))
    return codes


def _metrics_page(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        return str(page.read().decode())


def grpc_frame(message: bytes) -> bytes:
    """A length-prefixed gRPC message: what goes in an HTTP/2 DATA frame."""
    return struct.pack(">?I", False, len(message)) + message


def _poll(ready: Callable[[], bool], process: subprocess.Popen[bytes]) -> None:
    """Call `ready` until it is true; give up if the server process exits first."""
    while True:
        try:
            if ready():
                return
        except (ConvserveError, OSError):
            pass
        if process.poll() is not None:
            sys.exit(f"server exited with {process.returncode}")
        time.sleep(0.01)


def wait_serving(target: str, process: subprocess.Popen[bytes], service: str = "") -> None:
    """Poll health with a fresh channel each time (no reconnect backoff) until SERVING."""

    def serving() -> bool:
        with Client(target, timeout=1, retries=0) as client:
            return client.health(service) == "SERVING"

    _poll(serving, process)


def start_convserve(
    models_dir: Path, model: str, *extra: str, metrics: bool = False, http_port: int = 0
) -> tuple[subprocess.Popen[bytes], str, int, float]:
    """`python -m service` on loopback → (process, target, its metrics port (-1: none),
    seconds until every worker is SERVING). Its HTTP door listens on `http_port` (0: a free
    port, for callers that do not use it)."""
    port, metrics_port = free_port(), free_port() if metrics else -1
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port),
         "--http-port", str(http_port or free_port()),
         "--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port),
         "--models-dir", str(models_dir), "--default-model", model, "--log-level", "WARNING",
         *extra],
        cwd=ROOT,
    )  # fmt: skip
    target = f"127.0.0.1:{port}"
    wait_serving(target, process, model)
    workers = int(extra[extra.index("--workers") + 1]) if "--workers" in extra else available_cpus()
    if metrics:  # every worker, not only the one health reached, must serve
        _poll(functools.partial(_workers_serving, metrics_port, workers), process)
    return process, target, metrics_port, time.perf_counter() - started


def _workers_serving(metrics_port: int, workers: int) -> bool:
    return f"\nconvserve_workers {workers:.1f}\n" in _metrics_page(metrics_port)


def start_ceiling(*flags: str) -> tuple[subprocess.Popen[bytes], str]:
    """`bench/ceiling.py` (the no-op server, or with `--responses`) on loopback."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "ceiling.py"), "--port", str(port), *flags],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    process.stdout.readline()  # "ceiling serving on ..."
    return process, f"127.0.0.1:{port}"


def start_http_ceiling() -> tuple[subprocess.Popen[bytes], str]:
    """`bench/http_ceiling.py` (the no-op HTTP server, a process per CPU) on loopback."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "http_ceiling.py"), "--port", str(port)],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    if not process.stdout.readline():  # "http ceiling serving on ..."
        sys.exit(f"bench/http_ceiling.py exited with {process.wait()}")
    return process, f"127.0.0.1:{port}"


def start_pyvoy(models_dir: Path, model: str) -> tuple[subprocess.Popen[bytes], str]:
    """The pyvoy prototype (`bench/pyvoy_front.py`) on loopback, once it answers Predict."""
    port = free_port()
    env = {**os.environ, "CONVSERVE_MODELS_DIR": str(models_dir.resolve()),
           "CONVSERVE_DEFAULT_MODEL": model, "CONVSERVE_METRICS_PORT": "-1"}  # fmt: skip
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "pyvoy"), "bench.pyvoy_front", "--port", str(port),
         "--loop", "uvloop", "--log-level", "error"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    target = f"127.0.0.1:{port}"

    def answers() -> bool:
        with Client(target, timeout=1, retries=0) as client:
            return bool(client.predict(np.zeros((1, 28, 28), np.uint8)).top)

    _poll(answers, process)
    return process, target


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
