"""Hot reload on a real server: versions published and removed under load, broken artifacts
rejected, models loaded and unloaded on request (V2 repository RPCs and the CLI)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from client import AsyncClient, Client
from client.errors import ConvserveError
from convserve.fashion_mnist import Dataset
from tests.conftest import RunningServer, as_format_1, serving


def publish(root: Path, version: int, *, corrupt: bool = False) -> Path:
    """Copy version 1 as `version`: written aside, then renamed into place in one step."""
    staging = root / "fashion" / f".staging-{version}"
    shutil.copytree(root / "fashion" / "1", staging)
    metadata = json.loads((staging / "metadata.json").read_text())
    (staging / "metadata.json").write_text(json.dumps({**metadata, "version": version}))
    if corrupt:  # a half-written copy: the bytes no longer match metadata.json's sha256
        model = staging / "model.onnx"
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    target = root / "fashion" / str(version)
    staging.rename(target)
    return target


@pytest.fixture
def reloading(models_dir: Path, tmp_path: Path) -> Iterator[tuple[RunningServer, Path]]:
    from service.settings import Settings

    root = tmp_path / "models"
    shutil.copytree(models_dir / "fashion" / "1", root / "fashion" / "1")
    settings = Settings(
        host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0, models_dir=root,
        default_model="fashion", poll_seconds=0.1,
    )  # fmt: skip
    with serving(settings) as running:
        yield running, root


async def test_new_version_under_load_then_old_removed_without_a_failed_request(
    reloading: tuple[RunningServer, Path], test_images: Dataset
) -> None:
    server, root = reloading
    images = test_images.images[:4]
    answered: list[int] = []
    failures: list[ConvserveError] = []
    stop = asyncio.Event()

    async def caller(client: AsyncClient) -> None:
        while not stop.is_set():
            try:
                answered.append((await client.predict(images)).version)
            except ConvserveError as exc:
                failures.append(exc)

    async def wait_for(condition: Any) -> None:
        deadline = time.monotonic() + 60
        while not condition() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async with AsyncClient(server.target, retries=0) as client:
        callers = [asyncio.create_task(caller(client)) for _ in range(8)]
        await wait_for(lambda: len(answered) > 50)
        published = time.monotonic()
        publish(root, 2)
        await wait_for(lambda: 2 in answered)
        switched = time.monotonic() - published
        shutil.rmtree(root / "fashion" / "1")
        before = len(answered)
        await wait_for(lambda: len(answered) > before + 200)
        stop.set()
        await asyncio.gather(*callers)
    print(f"\nhot reload: {len(answered)} requests, {len(failures)} failed; version 2 answered "
          f"{switched:.2f} s after its directory appeared")  # fmt: skip
    assert failures == []
    assert 1 in answered and 2 in answered
    assert set(answered[before:]) == {2}
    assert server.server.repository.index()[-1].version == 2


def test_a_broken_version_is_rejected_and_the_serving_one_keeps_serving(
    reloading: tuple[RunningServer, Path], test_images: Dataset
) -> None:
    server, root = reloading
    broken = publish(root, 2, corrupt=True)
    repository = server.server.repository
    deadline = time.monotonic() + 30
    while not any(e.version == 2 for e in repository.index()) and time.monotonic() < deadline:
        time.sleep(0.05)
    with Client(server.target) as client:
        assert client.predict(test_images.images[:2]).version == 1
    entry = next(e for e in repository.index() if e.version == 2)
    assert entry.state == "UNAVAILABLE" and "sha256" in entry.reason and str(broken) in entry.reason
    metrics = server.scrape()
    assert 'convserve_model_load_failures_total{model="fashion"} 1.0' in metrics


def test_unload_and_load_through_v2_and_the_cli(
    reloading: tuple[RunningServer, Path], test_images: Dataset
) -> None:
    server, _ = reloading
    cli = [sys.executable, "-m", "convserve", "models", "--target", server.target]
    done = subprocess.run([*cli, "unload", "fashion"], capture_output=True, text=True)
    assert (done.returncode, done.stdout.strip()) == (0, "unloaded fashion")
    with Client(server.target) as client:
        with pytest.raises(ConvserveError) as caught:
            client.predict(test_images.images[:1], model="fashion")
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        assert client.health("fashion") == "NOT_SERVING"
        client.load_model("fashion")
        assert client.predict(test_images.images[:1]).version == 1
        assert client.health("fashion") == "SERVING"
        with pytest.raises(ConvserveError) as caught:
            client.load_model("nope")
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
    done = subprocess.run([*cli, "load", "fashion"], capture_output=True, text=True)
    assert (done.returncode, done.stdout.strip()) == (0, "loaded fashion")


def _cut_in_half(version: Path, file: str) -> None:
    path = version / file
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _onnx_of_another_shape(version: Path) -> None:
    """A valid graph that takes RGB 32x32 images, recorded with its sha256: not this model."""
    import onnx
    from onnx import TensorProto, helper

    from convserve.artifact import FileEntry

    graph = helper.make_graph(
        [helper.make_node("Flatten", ["pixels"], ["flat"]),
         helper.make_node("Softmax", ["flat"], ["probabilities"])],
        "rgb",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [None, 32, 32, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3072])],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              version / "model.onnx")  # fmt: skip
    metadata = json.loads((version / "metadata.json").read_text())
    entry = FileEntry.of(version / "model.onnx").to_dict()
    metadata["files"] = [entry if f["path"] == "model.onnx" else f for f in metadata["files"]]
    (version / "metadata.json").write_text(json.dumps(metadata))


DAMAGES = {
    "model.onnx cut in half": (lambda v: _cut_in_half(v, "model.onnx"), "a partial copy"),
    "metadata.json cut in half": (lambda v: _cut_in_half(v, "metadata.json"), "cannot read it"),
    "model.onnx of another model": (
        _onnx_of_another_shape,
        "metadata.json says pixels [28, 28, 1]",
    ),
    "a version from before ONNX": (as_format_1, "`convserve export-onnx layers --models-dir "),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_broken_model_at_start_up_is_reported_and_the_others_serve(
    models_dir: Path, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    from convserve.api.pb.inference import grpc_predict_v2_pb2 as v2
    from convserve.api.pb.inference import grpc_predict_v2_pb2_grpc as v2_grpc
    from service.settings import Settings

    root = tmp_path / "models"
    shutil.copytree(models_dir / "fashion" / "1", root / "fashion" / "1")
    shutil.copytree(models_dir / "layers" / "1", root / "layers" / "1")
    damaged, reason = root / "layers" / "1", DAMAGES[damage][1]
    DAMAGES[damage][0](damaged)
    settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, models_dir=root)
    with serving(settings) as server, Client(server.target) as client:
        assert client.predict(np.zeros((1, 28, 28), np.uint8), model="fashion").model == "fashion"
        assert client.health() == "SERVING"  # the server serves what it could load
        assert client.health("fashion") == "SERVING"
        assert client.health("layers") == "NOT_SERVING"
        with grpc.insecure_channel(server.target) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            assert not stub.ModelReady(v2.ModelReadyRequest(name="layers")).ready
            index = stub.RepositoryIndex(v2.RepositoryIndexRequest())
    (entry,) = [m for m in index.models if m.name == "layers"]
    assert entry.state == "UNAVAILABLE" and str(damaged) in entry.reason and reason in entry.reason
    assert any("layers" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
