"""The public surface of each package, and what each command loads: the client never needs
TensorFlow, and `convserve health` (the container's health check) loads no server code."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys

import pytest

PUBLIC = {
    "convserve": ["api", "artifact", "cli", "fashion_mnist", "imagefiles", "pictures"],
    "training": [
        "commands", "data", "errors", "export", "importer", "layers", "model", "onnx_import",
        "plan", "publish", "reference", "report", "tf2onnx_ops", "train",
    ],
    "service": [
        "boundary", "calls", "cpus", "errors", "grpc", "http", "images", "layouts", "main",
        "metrics", "model", "policies", "repository", "settings", "tokens", "workers",
    ],
    "client": [
        "AsyncClient", "ClassScore", "Client", "ConvserveError", "ExplainResult",
        "FeatureMapResult", "FiltersResult", "Layer",
        "ModelInfo", "ModelSummary", "PredictResult",
    ],
}  # fmt: skip

MODULES = [
    "convserve.api.codec", "convserve.artifact", "convserve.cli", "convserve.fashion_mnist",
    "convserve.imagefiles", "convserve.pictures", "client.client", "client.commands",
    "client.errors", "client.loadtest",
    "service.calls", "service.cpus", "service.errors", "service.policies", "service.tokens",
    "service.images", "service.main", "service.metrics", "service.model", "service.repository",
    "service.settings", "service.grpc.auth", "service.boundary", "service.grpc.engine",
    "service.grpc.server", "service.grpc.v1", "service.grpc.v2", "service.responses",
    "service.workers", "service.http.door", "service.http.rest", "service.http.connect",
    "service.http.explorer", "service.http.announce", "service.layouts",
    "training.commands", "training.data", "training.errors", "training.export",
    "training.importer", "training.layers", "training.model", "training.onnx_import",
    "training.plan", "training.publish", "training.reference", "training.report",
    "training.tf2onnx_ops", "training.train",
]  # fmt: skip


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_all_is_explicit(package: str) -> None:
    assert sorted(importlib.import_module(package).__all__) == PUBLIC[package]


@pytest.mark.parametrize("module", MODULES)
def test_every_name_in_all_exists(module: str) -> None:
    imported = importlib.import_module(module)
    assert imported.__all__, module
    for name in imported.__all__:
        assert hasattr(imported, name), f"{module}.{name}"


def _loaded_after(code: str) -> dict[str, bool]:
    """Which heavy modules a fresh interpreter has loaded after running `code`."""
    heavy = ("tensorflow", "keras", "pydantic_settings", "service", "training")
    script = f"import sys\n{code}\nprint([m in sys.modules for m in {heavy!r}])"
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    flags = ast.literal_eval(completed.stdout.strip().splitlines()[-1])
    return dict(zip(heavy, flags, strict=True)) | {"output": completed.stdout}


def test_help_lists_every_command_without_tensorflow() -> None:
    loaded = _loaded_after(
        "from convserve.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    )
    assert not loaded["tensorflow"] and not loaded["keras"]
    for command in ("train", "serve", "predict", "featuremap", "explain", "health", "loadtest"):
        assert command in loaded["output"]


def test_health_loads_neither_the_server_nor_training() -> None:
    """The container's HEALTHCHECK runs it every 10 s: nothing but the client library."""
    loaded = _loaded_after(
        "from convserve.cli import main\n"
        "print('exit', main(['health', '--target', '127.0.0.1:9', '--timeout', '0.1']))"
    )
    assert "exit 2" in loaded["output"]  # it ran: no server there
    assert not any(loaded[m] for m in ("tensorflow", "pydantic_settings", "service", "training"))


def test_python_dash_m_convserve_runs_the_command() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "convserve", "health", "--target", "127.0.0.1:9", "--timeout",
         "0.1"], capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert completed.returncode == 2
    assert completed.stderr.startswith("convserve health: error: ")
