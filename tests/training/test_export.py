"""The served form: ONNX graphs that ONNX Runtime runs as Keras does, or no version at all."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest

from convserve import artifact, fashion_mnist
from tests.conftest import as_format_1
from training.errors import ExportError
from training.export import TOLERANCE, check, write_served_form
from training.model import ConvLayer, ModelConfig, build_model
from training.reference import conv2d
from training.train import PREPROCESSING

pytestmark = pytest.mark.integration  # TensorFlow, tf2onnx and the real test images


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return fashion_mnist.load("test", limit=64).images


def _served(config: ModelConfig, directory: Path, images: np.ndarray) -> tuple[Any, Path]:
    """An untrained model of `config` (its random weights are as good a check as trained
    ones) written out as the server would get it."""
    model = build_model(config, 10)
    directory.mkdir(exist_ok=True)
    written = write_served_form(model, directory, PREPROCESSING, images)
    assert all((directory / entry.path).is_file() for entry in written)
    return model, directory


def _session(path: Path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_every_graph_computes_what_keras_and_the_reference_compute(
    tmp_path: Path, images: np.ndarray
) -> None:
    import keras

    config = ModelConfig(conv=(ConvLayer(4, 3, padding="same"), ConvLayer(6, 3, strides=2)))
    model, directory = _served(config, tmp_path, images)
    pixels = images[..., None].astype(np.float32)
    inputs = pixels * PREPROCESSING.scale
    (probabilities,) = _session(directory / artifact.ONNX_FILE).run(None, {"pixels": pixels})
    np.testing.assert_allclose(probabilities, model.predict(inputs, verbose=0), atol=TOLERANCE)

    features = _session(directory / artifact.FEATURES_FILE)
    first, first_pre, second_pre = features.run(
        ["conv2d", "conv2d.pre_activation", "conv2d_1.pre_activation"], {"pixels": pixels}
    )
    conv = model.get_layer("conv2d")
    kernel, bias = conv.get_weights()
    reference = conv2d(inputs[:4], kernel, bias, padding="same")  # the course's loops
    np.testing.assert_allclose(first_pre[:4], reference, atol=TOLERANCE)
    np.testing.assert_allclose(first, np.maximum(first_pre, 0), atol=TOLERANCE)
    below = keras.Model(model.input, model.get_layer("conv2d_1").input)(inputs[:4]).numpy()
    second = model.get_layer("conv2d_1")
    expected = conv2d(below, *second.get_weights(), strides=2)
    np.testing.assert_allclose(second_pre[:4], expected, atol=TOLERANCE)

    filters = np.load(directory / artifact.FILTERS_FILE)
    np.testing.assert_array_equal(filters["conv2d.kernel"], kernel)
    np.testing.assert_array_equal(filters["conv2d.bias"], bias)
    explain = _session(directory / artifact.EXPLAIN_FILE)
    assert {o.name for o in explain.get_outputs()} == {
        "probabilities", "classes", "conv2d.gradcam", "conv2d.hirescam", "conv2d_1.gradcam",
        "conv2d_1.hirescam",
    }  # fmt: skip


def test_gradients_through_every_layer_the_trainer_builds(
    tmp_path: Path, images: np.ndarray
) -> None:
    """The gradient ops tf2onnx lacks are taught to it (ReLU, max pooling, a conv's input):
    a pooled, batch-normalised stack with a hidden Dense(relu) has a gradient graph for every
    conv layer, and `write_served_form` has held each heatmap to TensorFlow's."""
    config = ModelConfig(
        conv=(ConvLayer(4, 3, batch_norm=True, pool_size=2), ConvLayer(6, 3, pool_size=2)),
        dense_units=8,
    )
    _, directory = _served(config, tmp_path / "pooled", images)
    outputs = {o.name for o in _session(directory / artifact.EXPLAIN_FILE).get_outputs()}
    assert {"conv2d.gradcam", "conv2d.hirescam", "conv2d_1.gradcam"} <= outputs


def test_an_activation_tf2onnx_cannot_differentiate_keeps_the_layers_after_it(
    tmp_path: Path, images: np.ndarray
) -> None:
    """elu's gradient does not convert: conv2d's heatmaps would need it, conv2d_1's do not.
    gelu (erfc inside) converts, gradients included."""
    config = ModelConfig(
        conv=(ConvLayer(4, 3, activation="gelu"), ConvLayer(4, 3, activation="elu"))
    )
    _, directory = _served(config, tmp_path, images)
    outputs = {o.name for o in _session(directory / artifact.EXPLAIN_FILE).get_outputs()}
    assert "conv2d_1.gradcam" in outputs and "conv2d.gradcam" not in outputs


def test_a_graph_that_differs_from_keras_is_refused_naming_the_output(
    tmp_path: Path, images: np.ndarray
) -> None:
    model, directory = _served(ModelConfig(conv=(ConvLayer(4, 3),)), tmp_path, images)
    session = _session(directory / artifact.ONNX_FILE)
    pixels = images[:8, ..., None].astype(np.float32)

    def keras_off_by_a_little(pixels: Any) -> dict[str, Any]:
        return {"probabilities": model(pixels * PREPROCESSING.scale).numpy() + 1e-4}

    with pytest.raises(ExportError, match=r"model.onnx: output 'probabilities' differs from Keras"):
        check("model.onnx", keras_off_by_a_little, session, {"pixels": pixels})


def test_export_onnx_brings_a_version_from_before_onnx_up_to_date(
    models_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    old = root / "fashion" / "1"
    shutil.copytree(models_dir / "fashion" / "1", old)
    as_format_1(old)
    metadata = json.loads((old / "metadata.json").read_text())

    cli = [sys.executable, "-m", "convserve", "export-onnx", "fashion", "--models-dir", str(root)]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"exported {root / 'fashion' / '2'}: explain.onnx, ")
    new = artifact.read(root / "fashion" / "2")
    on_disk = json.loads((root / "fashion" / "2" / "metadata.json").read_text())
    assert on_disk["format_version"] == artifact.FORMAT_VERSION
    assert {f.path for f in new.files} >= {"model.keras", "model.onnx", "features.onnx"}
    assert new.classes == tuple(metadata["classes"]) and new.training["exported_from_version"] == 1
    cli[4] = "nope"
    again = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "no version" in again.stderr
