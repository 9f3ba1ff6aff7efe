"""Shared fixtures: tiny models trained on slices of the real data, and a real server on port 0."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Quiet TensorFlow's C++ start-up logs in every test process (set before any import of TF).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Servers in tests run side by side: each HTTP door on a free port unless a test names one.
os.environ["CONVSERVE_HTTP_PORT"] = "0"

# The model with same/valid padding, stride 2, dilation 2 and a pooling layer for FeatureMap.
LAYERS_SPEC = ("4:3:same", "4:3:valid:2,pool=2", "3:2:valid:1:2:tanh")
# Convs → global average pooling → softmax: the head Grad-CAM was made for. No max pooling:
# both conv layers have gradient explanations (the second's gradient goes through a conv).
CAM_SPEC = ("6:3:same", "8:3:same:2")
MAX_IMAGES = 2000


TIERS = ("unit", "integration", "deploy")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test without a tier mark gets its folder's (integration/, deploy/); elsewhere one that
    needs the trained models (or a server on them) is integration, the rest unit."""
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            folder = item.path.parent.name
            if folder not in TIERS:
                folder = "integration" if "models_dir" in item.fixturenames else "unit"
            item.add_marker(folder)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`fashion` (small preset, 10 classes), `layers` (three convs) and `cam` (global average
    pooling head), trained once per run."""
    from training.model import PRESETS, ConvLayer, ModelConfig
    from training.publish import train

    root = tmp_path_factory.mktemp("models")
    small = PRESETS["small"].replace(train_limit=3000, test_limit=1000)
    train(small, name="fashion", models_dir=root, verbose=0)
    layers = ModelConfig(conv=tuple(ConvLayer.parse(spec) for spec in LAYERS_SPEC))
    train(
        small.replace(model=layers, train_limit=500, test_limit=200),
        name="layers",
        models_dir=root,
        verbose=0,
    )
    cam = ModelConfig(conv=tuple(ConvLayer.parse(spec) for spec in CAM_SPEC), head="global_avg")
    train(
        small.replace(model=cam, train_limit=1000, test_limit=200),
        name="cam",
        models_dir=root,
        verbose=0,
        report=False,
    )
    return root


def as_format_1(version: Path) -> None:
    """Turn a version into one written before ONNX serving: model.keras and metadata.json."""
    metadata = json.loads((version / "metadata.json").read_text())
    (keras_file,) = [f for f in metadata.pop("files") if f["path"] == "model.keras"]
    for path in version.iterdir():
        if path.name not in ("model.keras", "metadata.json"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    metadata.update(format_version=1, model_file=keras_file)
    (version / "metadata.json").write_text(json.dumps(metadata))


@dataclass
class RunningServer:
    """A real `Server` on 127.0.0.1, running its own event loop in a thread."""

    target: str
    server: Any
    loop: asyncio.AbstractEventLoop

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.server.metrics_port}/metrics"

    def scrape(self) -> str:
        """The server's Prometheus page, now."""
        return http_get(self.metrics_url)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus page's `name{...}` samples that carry `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@contextlib.contextmanager
def serving(settings: Any, load_model: Any = None) -> Iterator[RunningServer]:
    """A real `Server` with `settings` (and `load_model`, see `Server`), on its own event loop
    in a thread, until the block ends."""
    from service.grpc.server import Server
    from service.main import loop_factory

    loop = loop_factory(settings.event_loop)()  # the loop `convserve serve` would run
    thread = threading.Thread(target=loop.run_forever, name="server-loop", daemon=True)
    thread.start()
    instance = Server(settings, load_model=load_model)
    port = asyncio.run_coroutine_threadsafe(instance.start(), loop).result(timeout=300)
    try:
        yield RunningServer(f"127.0.0.1:{port}", instance, loop)
    finally:
        asyncio.run_coroutine_threadsafe(instance.stop(0), loop).result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture(scope="session")
def server(models_dir: Path) -> Iterator[RunningServer]:
    from service.settings import Settings

    settings = Settings(
        host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0, models_dir=models_dir,
        default_model="fashion", max_images=MAX_IMAGES,
    )  # fmt: skip
    with serving(settings) as running:
        yield running


@pytest.fixture(scope="session")
def test_images() -> Any:
    from convserve import fashion_mnist

    return fashion_mnist.load("test")


@pytest.fixture(scope="session")
def own(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The user's own models (tests/own_models.py): `folder` trained on an RGB image folder,
    `onnx` and `keras` imported."""
    from tests.own_models import (
        EASY,
        OFFSET,
        SCALE,
        keras_classifier,
        onnx_classifier,
        write_folder,
    )  # fmt: skip
    from training.importer import import_model
    from training.model import PRESETS
    from training.publish import train

    root = tmp_path_factory.mktemp("own")
    models = root / "models"
    folder = write_folder(root / "images", per_class=150)
    config = PRESETS["small"].replace(images=str(folder), epochs=4, batch_size=32)
    train(config, name="folder", models_dir=models, verbose=0, report=False)
    onnx_file = onnx_classifier(root / "net.onnx")
    import_model(onnx_file, name="onnx", classes=EASY, models_dir=models, scale=SCALE,
                 offset=OFFSET)  # fmt: skip
    keras_file = keras_classifier(root / "skip.keras")
    import_model(keras_file, name="keras", classes=EASY, models_dir=models, scale=SCALE,
                 offset=OFFSET)  # fmt: skip
    return {"models": models, "folder": folder, "onnx": onnx_file, "keras": keras_file}


@pytest.fixture(scope="session")
def own_server(own: dict[str, Path]) -> Iterator[RunningServer]:
    from service.settings import Settings

    settings = Settings(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0,
                        models_dir=own["models"], default_model="folder")  # fmt: skip
    with serving(settings) as running:
        yield running
