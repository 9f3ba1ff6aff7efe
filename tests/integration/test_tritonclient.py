"""The real `tritonclient[grpc]` against convserve: V2 callers work unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client import Client
from convserve.fashion_mnist import Dataset
from tests.integration.descriptors import fields

ROOT = Path(__file__).resolve().parents[2]
IMAGES = 64


@pytest.fixture(scope="module")
def triton(server: Any) -> dict[str, Any]:
    """Every call's result, from tritonclient in its own process (see tritonclient_calls.py)."""
    script = Path(__file__).with_name("tritonclient_calls.py")
    done = subprocess.run(
        [sys.executable, str(script), server.target, str(IMAGES)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results: dict[str, Any] = json.loads(done.stdout)
    return results


def test_our_proto_has_the_protocols_field_numbers(triton: dict[str, Any]) -> None:
    from convserve.api.pb.inference import grpc_predict_v2_pb2 as v2

    ours = {
        name: entry
        for message in v2.DESCRIPTOR.message_types_by_name.values()
        for name, entry in fields(message).items()
    }
    assert len(ours) > 60
    assert {name: triton["fields"].get(name) for name in ours} == ours


def test_health_and_metadata(triton: dict[str, Any]) -> None:
    assert triton["live"] and triton["ready"] and triton["model_ready"]
    assert not triton["unknown_model_ready"]
    assert triton["server_metadata"]["name"] == "convserve"
    metadata = triton["model_metadata"]
    assert metadata["inputs"] == [
        {"name": "images", "datatype": "FP32", "shape": ["-1", "28", "28", "1"]}
    ]
    assert {output["name"] for output in metadata["outputs"]} >= {"probabilities", "conv2d_1"}
    assert [(m["name"], m["state"]) for m in triton["index"]["models"]] == [
        ("cam", "READY"),
        ("fashion", "READY"),
        ("layers", "READY"),
    ]


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_infer_gives_the_probabilities_predict_gives(
    server: Any, triton: dict[str, Any], test_images: Dataset, dtype: str
) -> None:
    with Client(server.target) as client:
        expected = client.predict(test_images.images[:IMAGES]).probabilities
    np.testing.assert_allclose(np.array(triton[f"probabilities_{dtype}"]), expected, atol=1e-6)


def test_a_gradcam_output_is_explain(
    server: Any, triton: dict[str, Any], test_images: Dataset
) -> None:
    with Client(server.target) as client:
        expected = client.explain(test_images.images[:4], model="cam", class_index=1).heatmaps
    np.testing.assert_allclose(np.array(triton["gradcam"]), expected, atol=1e-6)


def test_a_layer_output_is_the_feature_map(
    server: Any, triton: dict[str, Any], test_images: Dataset
) -> None:
    images = test_images.images[:4]
    with Client(server.target) as client:
        expected = client.feature_map(images, layer="conv2d_1", model="layers").activations
        probabilities = client.predict(images, model="layers").probabilities
    np.testing.assert_allclose(np.array(triton["feature_map"]), expected, atol=1e-6)
    np.testing.assert_allclose(np.array(triton["layers_probabilities"]), probabilities, atol=1e-6)


def test_errors_reach_tritonclient_with_their_status(triton: dict[str, Any]) -> None:
    assert triton["unknown_model"]["status"] == "StatusCode.NOT_FOUND"
    assert "'nope' is not loaded" in triton["unknown_model"]["message"]
    assert triton["bad_datatype"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "expected UINT8 or FP32" in triton["bad_datatype"]["message"]


def test_stream_answers_every_request_and_reports_the_failed_one(
    server: Any, triton: dict[str, Any], test_images: Dataset
) -> None:
    first, failed, last = triton["stream"]
    assert failed["error"].startswith("NOT_FOUND: model 'nope'")
    assert (first["id"], last["id"]) == ("0", "2")
    with Client(server.target) as client:
        expected = client.predict(test_images.images[4:6]).probabilities
    np.testing.assert_allclose(np.array(last["probabilities"]), expected, atol=1e-6)
