"""The server as operators see it: health, reflection, metrics, `convserve serve` as a process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from client import Client
from client.errors import NotFound
from tests.conftest import free_port, metric


def test_health_is_serving_for_the_server_and_each_model(server) -> None:
    with Client(server.target) as client:
        assert client.health() == "SERVING"
        assert client.health("convserve.v1.ConvServe") == "SERVING"
        assert client.health("fashion") == client.health("layers") == "SERVING"
        with pytest.raises(NotFound):
            client.health("shoes")


def test_reflection_lists_the_services(server) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(server.target) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"convserve.v1.ConvServe", "grpc.health.v1.Health"} <= services


def test_metrics_count_requests_by_model_method_and_code(server) -> None:
    labels = {"model": "layers", "version": "1", "method": "Predict"}
    before = server.scrape()
    with Client(server.target) as client:
        for _ in range(3):
            client.predict(np.zeros((1, 28, 28), np.uint8), model="layers")
        with pytest.raises(NotFound):
            client.predict(np.zeros((1, 28, 28), np.uint8), model="layers", version=9)
    after = server.scrape()
    ok = metric(after, "convserve_requests_total", code="OK", **labels)
    assert ok - metric(before, "convserve_requests_total", code="OK", **labels) == 3
    not_found = {"method": "Predict", "code": "NOT_FOUND"}
    assert (
        metric(after, "convserve_requests_total", **not_found)
        - metric(before, "convserve_requests_total", **not_found)
        == 1
    )
    count = "convserve_request_duration_seconds_count"
    assert metric(after, count, model="layers", method="Predict") >= 3
    assert metric(after, "convserve_model_loaded", model="fashion", version="1") == 1


@pytest.fixture(scope="module")
def serve_process(models_dir: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`convserve serve` as its own process, configured by flags and a CONVSERVE_* variable;
    default workers: one per CPU available. Yielded once every worker serves."""
    from service.cpus import available_cpus

    port = free_port()
    env = {**os.environ, "CONVSERVE_DEFAULT_MODEL": "fashion"}
    process = subprocess.Popen(
        [sys.executable, "-m", "convserve", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--http-port", str(free_port()),
         "--metrics-port", "-1", "--models-dir", str(models_dir), "--log-format", "json",
         "--access-log", "true"],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert process.stderr is not None
    serving = 0
    for line in process.stderr:  # wait for each worker's log line that follows SERVING
        if line.startswith("{") and json.loads(line)["message"].startswith("serving "):
            assert json.loads(line)["level"] == "INFO"
            serving += 1
            if serving == available_cpus():
                break
    else:
        pytest.fail(f"the server exited with {process.wait()} before serving")
    yield process, f"127.0.0.1:{port}"
    if process.poll() is None:
        process.kill()
        process.wait()
    process.stderr.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "convserve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_against_a_served_process(serve_process, tmp_path: Path) -> None:
    import tensorflow as tf

    from convserve.fashion_mnist import load

    _, target = serve_process
    health = _cli("health", "--target", target)
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING")

    models = _cli("models", "--target", target)
    assert "fashion (default): versions 1; classes T-shirt/top, Trouser" in models.stdout

    predict = _cli("predict", "--target", target, "--fashion-mnist-test", "500")
    assert predict.returncode == 0, predict.stderr
    accuracy = float(predict.stdout.split("accuracy ")[1].split()[0])
    assert 0.6 < accuracy <= 1

    test = load("test", limit=2)
    files = []
    for index, image in enumerate(test.images):
        files.append(tmp_path / f"image{index}.png")
        files[-1].write_bytes(tf.io.encode_png(image[..., None]).numpy())
    by_file = _cli("predict", "--target", target, "--top-k", "1", *map(str, files))
    assert by_file.returncode == 0, by_file.stderr
    assert by_file.stdout.count(".png: ") == 2

    pictures = {
        "conv.png": ("featuremap", "--model", "layers", "--layer", "conv2d_1", str(files[0])),
        "explain.png": ("explain", "--model", "cam", "--class", "Trouser", *map(str, files)),
        "filters.png": ("filters", "--model", "layers", "--layer", "conv2d_1"),
    }
    out = {}
    for name, args in pictures.items():
        run = _cli(*args, "--target", target, "--png", str(tmp_path / name))
        assert run.returncode == 0, run.stderr
        out[name] = run.stdout
        width, height = map(
            int, run.stdout.split(f"wrote {tmp_path / name} (")[1].split()[0].split("x")
        )
        decoded = tf.io.decode_png((tmp_path / name).read_bytes()).numpy()
        assert decoded.shape[:2] == (height, width) and width > 200 and height > 150
        assert decoded.std() > 10  # a picture, not a blank page
    assert "conv2d_1 Conv2D(4) 28x28x4 → 13x13x4, kernel 3x3, strides 2x2" in out["conv.png"]
    assert "the 4 channels of image 0" in out["conv.png"]
    assert (
        "image0.png: Trouser " in out["explain.png"]
        and "image1.png: Trouser " in out["explain.png"]
    )
    assert "kernels [3, 3, 4, 4] (KH, KW, C_in, C_out)" in out["filters.png"]

    missing = _cli("predict", "--target", target, "--model", "shoes", str(files[0]))
    assert missing.returncode == 2 and "NOT_FOUND: model 'shoes' is not loaded" in missing.stderr


def test_no_server_process_loads_tensorflow(serve_process) -> None:
    """The supervisor and every worker run ONNX Runtime; TensorFlow's libraries are in none."""
    from service.cpus import available_cpus

    process, _ = serve_process
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    workers = [int(pid) for pid in children] or [process.pid]
    assert len(workers) == available_cpus()
    for pid in {process.pid, *workers}:
        libraries = Path(f"/proc/{pid}/maps").read_text()
        assert "tensorflow" not in libraries, f"process {pid} has TensorFlow loaded"
    for pid in workers:
        assert "onnxruntime" in Path(f"/proc/{pid}/maps").read_text()


def test_each_worker_runs_on_its_own_cpu(serve_process) -> None:
    """One worker per CPU: worker i's event loop and gRPC's threads run on the i-th CPU (a
    call's hand-offs between them stay on one core), gRPC's at the lowest priority; its
    inference threads (large batches) on any. Otherwise every thread floats."""
    from service.cpus import GRPC_THREADS_NICE, worker_cpus

    process, _ = serve_process
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    cpus = worker_cpus(len(children))
    everywhere = os.sched_getaffinity(0)
    loops = []
    for pid in children:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        name = {task.name: (task / "comm").read_text().strip() for task in tasks}
        nice = {task.name: int((task / "stat").read_text().split()[18]) for task in tasks}
        affinity = {task.name: os.sched_getaffinity(int(task.name)) for task in tasks}
        grpc_threads = [tid for tid in name if name[tid] == "event_engine"]
        assert grpc_threads and all(affinity[tid] == affinity[pid] for tid in grpc_threads)
        assert all(cpus_ in (affinity[pid], everywhere) for cpus_ in affinity.values())
        loops.append(sorted(affinity[pid]))
        if cpus:
            assert nice[pid] == 0
            assert {nice[tid] for tid in grpc_threads} == {GRPC_THREADS_NICE}
    assert sorted(loops) == ([[cpu] for cpu in cpus] if cpus else [sorted(everywhere)] * len(loops))
    if len(everywhere) == len(children) > 1:  # e.g. the 2-CPU CI machine
        assert cpus is not None


def test_access_log_and_sigterm(serve_process) -> None:
    from convserve.api.pb.convserve.v1 import convserve_pb2 as pb
    from convserve.api.pb.convserve.v1 import convserve_pb2_grpc as pb_grpc

    process, target = serve_process
    with grpc.insecure_channel(target) as channel:
        request = pb.PredictRequest(images=pb.Images(tensor=pb.Tensor(
            dtype=pb.DATA_TYPE_UINT8, shape=[1, 28, 28], content=bytes(784))))  # fmt: skip
        _, call = pb_grpc.ConvServeStub(channel).Predict.with_call(
            request, metadata=[("x-request-id", "caller-42")], timeout=30
        )
    assert ("x-request-id", "caller-42") in call.trailing_metadata()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert process.stderr is not None
    lines = [json.loads(line) for line in process.stderr if line.startswith("{")]
    assert lines[-1]["message"] == "stopped"
    access = [line for line in lines if line["logger"] == "convserve.access"]
    assert {"request_id": "caller-42", "method": "Predict", "model": "fashion", "version": "1",
            "code": "OK"}.items() <= access[-1].items()  # fmt: skip
    assert access[-1]["ms"] > 0
    assert any(line["code"] == "NOT_FOUND" for line in access)  # the CLI's unknown model


async def test_a_second_server_on_a_busy_port_fails(server, models_dir: Path) -> None:
    from convserve.cli import CommandError
    from service.grpc.server import Server
    from service.settings import Settings

    port = int(server.target.rsplit(":", 1)[1])
    second = Server(Settings(host="127.0.0.1", port=port, metrics_port=-1, models_dir=models_dir))
    try:
        with pytest.raises(CommandError, match=rf"cannot listen on 127.0.0.1:{port} \(--host"):
            await second.start()
    finally:
        await second.stop(0)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


async def test_draining_answers_while_health_says_not_serving(models_dir: Path) -> None:
    """What lets a load balancer move traffic away before a stopping replica refuses calls."""
    from client import AsyncClient
    from client.errors import Unavailable
    from service.grpc.server import Server
    from service.settings import Settings

    settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, models_dir=models_dir,
                        default_model="fashion", drain_seconds=1.5)  # fmt: skip
    server = Server(settings)
    image = np.zeros((1, 28, 28), np.uint8)
    async with AsyncClient(f"127.0.0.1:{await server.start()}", retries=0) as client:
        assert await client.health() == "SERVING"
        ready = f"http://127.0.0.1:{server.http_port}/v2/health/ready"
        assert await asyncio.to_thread(_status, ready) == 200
        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0.3)
        assert await client.health() == "NOT_SERVING"
        assert await asyncio.to_thread(_status, ready) == 400  # V2 readiness agrees
        assert (await client.predict(image)).model == "fashion"
        await stopping
        with pytest.raises(Unavailable):
            await client.predict(image)
