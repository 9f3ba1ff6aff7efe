"""`convserve serve --workers N` acts as one server: control calls reach every worker before
they return, one metrics port counts them all, a killed worker comes back with the state."""

from __future__ import annotations

import collections
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from client import Client
from client.errors import ConvserveError, Unavailable
from convserve.api.pb.inference import grpc_predict_v2_pb2 as v2
from convserve.api.pb.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from tests.conftest import free_port, http_get, metric

WORKERS = 4
IMAGE = np.zeros((1, 28, 28), np.uint8)


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    target: str
    metrics_port: int
    log: Path
    http_port: int

    def scrape(self) -> str:
        return http_get(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def workers(self) -> list[int]:
        """The pids of the worker processes now."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()]

    def pids_answering(self, method: str) -> collections.Counter[int]:
        """Access-log lines of `method` by the pid of the worker that answered."""
        lines = (json.loads(line) for line in self.log.read_text().splitlines() if line[:1] == "{")
        return collections.Counter(
            line["pid"] for line in lines if line.get("method") == method and "code" in line
        )


def _gauge(page: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", page, re.M)
    assert match, f"{name} not on the metrics page"
    return float(match.group(1))


def _wait(condition: Callable[[], bool], process: subprocess.Popen[bytes], seconds: float) -> None:
    """Until `condition()` (errors count as not yet), for at most `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited with {process.returncode}"
        try:
            if condition():
                return
        except (ConvserveError, OSError, AssertionError):
            pass
        time.sleep(0.05)
    pytest.fail(f"not within {seconds} s")


def _replaced(served: Served, victim: int, workers: int) -> bool:
    pids = served.workers()
    return len(pids) == workers and victim not in pids


def _start(models_dir: Path, log: Path, workers: int, *flags: str) -> Served:
    port, metrics_port, http_port = free_port(), free_port(), free_port()
    with log.open("w") as stderr:  # the child writes to its own copy
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port),
             "--http-port", str(http_port),
             "--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port),
             "--workers", str(workers), "--models-dir", str(models_dir),
             "--default-model", "fashion", "--log-format", "json", "--access-log", "true", *flags],
            stderr=stderr,
        )  # fmt: skip
    served = Served(process, f"127.0.0.1:{port}", metrics_port, log, http_port)
    _wait(lambda: _gauge(served.scrape(), "convserve_workers") == workers, process, 120)
    return served


def _stop(served: Served) -> int:
    served.process.send_signal(signal.SIGTERM)
    try:
        return served.process.wait(timeout=60)
    finally:
        if served.process.poll() is None:
            served.process.kill()
            served.process.wait()


@pytest.fixture(scope="module")
def served(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = _start(models_dir, tmp_path_factory.mktemp("workers") / "server.log", WORKERS)
    yield served
    assert _stop(served) == 0


def _predict_on_new_connections(target: str, model: str, count: int) -> collections.Counter[str]:
    """`count` Predicts of `model`, each on a connection of its own: outcomes by name."""
    outcomes: collections.Counter[str] = collections.Counter()
    for _ in range(count):
        with Client(target, retries=0, timeout=10) as client:
            try:
                client.predict(IMAGE, model=model)
                outcomes["OK"] += 1
            except ConvserveError as exc:
                outcomes[type(exc).__name__] += 1
    return outcomes


def _views(target: str, model: str) -> tuple[bool, str, bool, tuple[str, ...]]:
    """What one new connection says of `model`: V2 ModelReady, its health, whether
    ListModels lists it, and its RepositoryIndex states."""
    with grpc.insecure_channel(target) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        ready = stub.ModelReady(v2.ModelReadyRequest(name=model), timeout=10).ready
        index = stub.RepositoryIndex(v2.RepositoryIndexRequest(), timeout=10).models
        states = tuple(entry.state for entry in index if entry.name == model)
    with Client(target, retries=0, timeout=10) as client:
        listed = model in {summary.name for summary in client.list_models()}
        return ready, client.health(model), listed, states


def _cli(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "convserve", "models", *args, "--target", target],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_unload_and_load_reach_every_worker_before_they_return(served: Served) -> None:
    before = served.pids_answering("Predict")
    unload = _cli(served.target, "unload", "cam")
    assert (unload.returncode, unload.stdout.strip()) == (0, "unloaded cam"), unload.stderr
    assert _predict_on_new_connections(served.target, "cam", 200) == {"NotFound": 200}
    assert {_views(served.target, "cam") for _ in range(20)} == {
        (False, "NOT_SERVING", False, ("UNAVAILABLE",))
    }
    load = _cli(served.target, "load", "cam")
    assert (load.returncode, load.stdout.strip()) == (0, "loaded cam"), load.stderr
    assert _predict_on_new_connections(served.target, "cam", 200) == {"OK": 200}
    ready = (True, "SERVING", True, ("READY",))
    assert {_views(served.target, "cam") for _ in range(20)} == {ready}
    # Each worker answered some of the 400 (the access log names the pid): not one alone.
    answered = served.pids_answering("Predict") - before
    assert set(answered) == set(served.workers()) and len(answered) == WORKERS, answered


def _http(served: Served, method: str, path: str) -> int:
    """One call on a new connection: its HTTP status."""
    request = urllib.request.Request(f"http://127.0.0.1:{served.http_port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_rest_unload_and_load_reach_every_worker_too(served: Served) -> None:
    assert _http(served, "POST", "/v2/repository/models/cam/unload") == 200
    assert {_http(served, "GET", "/v2/models/cam/ready") for _ in range(40)} == {400}
    assert _http(served, "POST", "/v2/repository/models/cam/load") == 200
    assert {_http(served, "GET", "/v2/models/cam/ready") for _ in range(40)} == {200}


def test_rounds_of_unload_and_load_leave_every_worker_alike(served: Served) -> None:
    for round_ in range(20):
        with Client(served.target, retries=0, timeout=30) as client:
            client.unload_model("layers")
        with Client(served.target, retries=0, timeout=30) as client:
            if round_ < 19:
                client.load_model("layers")
    assert _predict_on_new_connections(served.target, "layers", 60) == {"NotFound": 60}
    assert _gauge(served.scrape(), "convserve_workers") == WORKERS
    assert metric(served.scrape(), "convserve_model_loaded", model="layers") == 0
    with Client(served.target, retries=0, timeout=30) as client:
        client.load_model("layers")
    assert _predict_on_new_connections(served.target, "layers", 60) == {"OK": 60}
    assert metric(served.scrape(), "convserve_model_loaded", model="layers") == WORKERS


def test_a_frozen_worker_fails_the_call_by_name_and_a_retry_aligns_all(served: Served) -> None:
    frozen = served.workers()[0]
    os.kill(frozen, signal.SIGSTOP)
    try:
        for _ in range(30):  # until a connection lands on a worker that can answer
            with Client(served.target, retries=0, timeout=3) as client:
                try:
                    client.unload_model("cam")
                except Unavailable as exc:
                    message = str(exc)
                    if "did not" in message:  # the relay named a worker (not a failed connect)
                        break
                except ConvserveError:  # on the frozen worker itself: its deadline passed
                    pass
        else:
            pytest.fail("no connection reached a worker that answers")
        assert f"pid {frozen}" in message and "retry" in message, message
    finally:
        os.kill(frozen, signal.SIGCONT)
    with Client(served.target, timeout=30) as client:
        client.unload_model("cam")
    assert _predict_on_new_connections(served.target, "cam", 60) == {"NotFound": 60}
    with Client(served.target, timeout=30) as client:
        client.load_model("cam")
    assert _predict_on_new_connections(served.target, "cam", 60) == {"OK": 60}


def test_one_scrape_counts_every_worker(served: Served) -> None:
    page = served.scrape()
    calls = 150
    assert _predict_on_new_connections(served.target, "layers", calls) == {"OK": calls}
    after = served.scrape()
    labels = {"model": "layers", "method": "Predict"}
    for name in ("convserve_requests_total", "convserve_request_duration_seconds_count"):
        assert metric(after, name, **labels) - metric(page, name, **labels) == calls, name
    assert metric(after, "convserve_inflight_requests") == 0
    for figure in ("process_cpu_seconds_total", "process_resident_memory_bytes"):
        for worker in range(WORKERS):
            assert metric(after, figure, worker=str(worker)) > 0, (figure, worker)
    # The old per-worker ports (metrics port + i) are not opened.
    for index in range(1, WORKERS):
        with pytest.raises(OSError):
            http_get(f"http://127.0.0.1:{served.metrics_port + index}/metrics", timeout=2)


def test_a_killed_worker_is_replaced_with_the_state_while_the_others_serve(
    served: Served,
) -> None:
    with Client(served.target, timeout=30) as client:
        client.unload_model("cam")
    failures: list[Exception] = []
    answered = 0
    stop = threading.Event()

    def load() -> None:  # calls on connections renewed every 20 calls
        nonlocal answered
        while not stop.is_set():
            with Client(served.target, timeout=10) as client:
                for _ in range(20):
                    try:
                        client.predict(IMAGE)
                        answered += 1
                    except ConvserveError as exc:
                        failures.append(exc)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        _wait(lambda: answered > 100, served.process, 30)
        victim = served.workers()[-1]
        served_before = answered
        os.kill(victim, signal.SIGKILL)
        _wait(functools.partial(_replaced, served, victim, WORKERS), served.process, 30)
        _wait(lambda: _gauge(served.scrape(), "convserve_workers") == WORKERS, served.process, 60)
        assert answered > served_before  # the others kept serving
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert all(isinstance(failure, Unavailable) for failure in failures), failures
    # The replacement has the unload: no fresh connection finds cam.
    assert _predict_on_new_connections(served.target, "cam", 80) == {"NotFound": 80}
    assert metric(served.scrape(), "convserve_model_loaded", model="cam") == 0
    with Client(served.target, timeout=30) as client:
        client.load_model("cam")
    assert _predict_on_new_connections(served.target, "cam", 80) == {"OK": 80}


def test_a_worker_that_keeps_dying_stops_the_server(models_dir: Path, tmp_path: Path) -> None:
    served = _start(models_dir, tmp_path / "server.log", 2)
    try:
        for death in range(1, 6):
            victim = served.workers()[0]
            os.kill(victim, signal.SIGKILL)
            if death < 5:  # each is replaced, until the fifth
                _wait(functools.partial(_replaced, served, victim, 2), served.process, 30)
        assert served.process.wait(timeout=60) == 1
    finally:
        if served.process.poll() is None:
            served.process.kill()
    assert "exited 5 times in 60 s; stopping the server" in served.log.read_text()


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("flag", ["--port", "--http-port", "--metrics-port"])
def test_a_taken_port_is_one_line_naming_it(flag: str, workers: int, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = {flag: free_port() for flag in ("--port", "--http-port", "--metrics-port")}
        ports[flag] = taken.getsockname()[1]
        finished = subprocess.run(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(ports["--port"]),
             "--http-port", str(ports["--http-port"]),
             "--metrics-host", "127.0.0.1", "--metrics-port", str(ports["--metrics-port"]),
             "--workers", str(workers), "--models-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert finished.returncode == 2
    *_, error = finished.stderr.strip().splitlines()
    expected = f"port {ports[flag]} ({flag}) is in use; pick another with {flag}"
    assert error == f"convserve serve: error: {expected}"
    assert "Traceback" not in finished.stderr


def test_the_start_line_names_the_explorer_page_and_every_worker_serves_it(
    served: Served,
) -> None:
    address = f"http://127.0.0.1:{served.http_port}/"
    _wait(lambda: "serving with" in served.log.read_text(), served.process, 30)
    starts = [line for line in served.log.read_text().splitlines() if "serving with" in line]
    assert len(starts) == 1 and f"the explorer page: {address}" in starts[0], starts
    for _ in range(20):  # fresh connections, so every worker answers some
        assert "<title>convserve explorer</title>" in http_get(address)
    # The supervisor serves neither door: it keeps none of the workers' libraries in memory.
    libraries = Path(f"/proc/{served.process.pid}/maps").read_text()
    assert not [name for name in ("cygrpc", "aiohttp", "onnxruntime") if name in libraries]


def test_a_client_with_several_connections_reaches_every_worker(served: Served) -> None:
    """One connection reaches one worker (SO_REUSEPORT places connections); `connections=`
    spreads a client's calls over several, so every worker answers some."""
    before = served.pids_answering("Predict")
    with Client(served.target, connections=1) as client:
        for _ in range(30):
            client.predict(np.zeros((1, 28, 28), np.uint8))
    one = served.pids_answering("Predict") - before
    assert len(one) == 1 and sum(one.values()) == 30
    before = served.pids_answering("Predict")
    with Client(served.target, connections=16 * WORKERS) as client:  # all miss one: ~4e-8
        for _ in range(32 * WORKERS):
            client.predict(np.zeros((1, 28, 28), np.uint8))
    spread = served.pids_answering("Predict") - before
    assert set(spread) == set(served.workers()), spread
