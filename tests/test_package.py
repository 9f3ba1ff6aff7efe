"""The public surface of each package, and the client's promise not to need TensorFlow."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PUBLIC = {
    "training": ["data", "model", "plan", "reference", "report", "train"],
    "service": ["errors", "grpc", "images", "main", "metrics", "model", "repository", "settings"],
    "client": [
        "AsyncClient", "ClassScore", "Client", "ConvserveError", "ExplainResult",
        "FeatureMapResult", "FiltersResult", "Layer",
        "ModelInfo", "ModelSummary", "PredictResult",
    ],
}  # fmt: skip

MODULES = [
    "client.client", "client.errors", "client.tensors", "service.errors", "service.images",
    "service.metrics", "service.model", "service.repository", "service.settings",
    "service.grpc.server", "service.grpc.servicer", "service.grpc.boundary",
    "training.data", "training.model", "training.reference", "training.train",
    "training.plan", "training.report", "client.pictures",
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


def test_client_and_cli_help_do_not_import_tensorflow() -> None:
    code = (
        "import sys, client, client.cli, client.tensors, client.errors\n"
        "try:\n    client.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert completed.stdout.strip().splitlines()[-1] == "False False"
    assert "train" in completed.stdout
