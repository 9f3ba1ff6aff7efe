"""Bring your own images and models: a model trained on a folder of images, an ONNX classifier
built elsewhere (NCHW, RGB, not 28x28) and a Keras functional model with a skip connection,
each served by a real server and checked against the framework that defines it."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from client import Client
from client.errors import InvalidArgument
from convserve import artifact, imagefiles
from tests.own_models import (
    EASY,
    OFFSET,
    ONNX_SHAPE,
    SCALE,
    SIDE,
    onnx_classifier,
)
from training import data
from training.errors import ExportError
from training.importer import import_model


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def keras_model(version: Path) -> Any:
    import keras

    return keras.models.load_model(version / artifact.KERAS_FILE, compile=False)


def test_a_folder_model_learns_three_easy_classes_and_serves_them(own, own_server) -> None:
    version = own["models"] / "folder" / "1"
    metadata = artifact.read(version)
    assert metadata.classes == tuple(sorted(EASY))
    assert metadata.input.shape == (SIDE, SIDE, 3)
    assert (metadata.preprocessing.color, metadata.preprocessing.interpolation) == (
        "rgb",
        "bilinear",
    )
    assert metadata.origin == {"kind": "trained", "data": str(own["folder"])}
    assert metadata.evaluation["test_accuracy"] >= 0.90
    # The held-out files, sent as the PNG files they are: the server decodes them as training
    # did, so its answers are Keras's on the training pipeline's pixels.
    folder = data.scan(own["folder"])
    files = [path.read_bytes() for path, _ in folder.test_files]
    labels = np.array([label for _, label in folder.test_files])
    with Client(own_server.target) as client:
        served = client.predict(files).probabilities
    pixels = np.stack([imagefiles.decode(f, folder.shape, folder.preprocessing) for f in files])
    expected = keras_model(version).predict(pixels / np.float32(255), verbose=0)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert (served.argmax(axis=1) == labels).mean() >= 0.90
    assert len(files) == metadata.evaluation["test_examples"]


def test_the_server_converts_and_resizes_any_png_as_training_did(own, own_server) -> None:
    folder = data.scan(own["folder"])
    original = np.asarray(Image.open(folder.test_files[0][0]))
    bigger = np.asarray(Image.fromarray(original).resize((3 * SIDE, 2 * SIDE)))
    gray = np.asarray(Image.fromarray(original).convert("L"))
    files = [png(bigger), png(gray)]
    with Client(own_server.target) as client:
        served = client.predict(files, model="folder").probabilities
        with pytest.raises(
            InvalidArgument, match=r"shape \[1, 28, 28\]; expected .*\[N, 32, 32, 3\]"
        ):
            client.predict(np.zeros((1, 28, 28), np.uint8), model="folder")
    pixels = np.stack([imagefiles.decode(f, folder.shape, folder.preprocessing) for f in files])
    assert pixels.shape == (2, SIDE, SIDE, 3)
    assert (pixels[1, ..., 0] == pixels[1, ..., 2]).all()  # grayscale made RGB
    expected = keras_model(own["models"] / "folder" / "1").predict(
        pixels / np.float32(255), verbose=0
    )
    np.testing.assert_allclose(served, expected, atol=1e-5)


def onnx_source(path: Path, outputs: list[str]) -> onnxruntime.InferenceSession:
    """ONNX Runtime on the source graph, with intermediate tensors as extra outputs."""
    model = onnx.load(path)
    model.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
                              for name in outputs)  # fmt: skip
    return onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )


def test_an_imported_onnx_model_answers_as_onnx_runtime_on_its_source(own, own_server) -> None:
    height, width = ONNX_SHAPE[1:]
    pixels = np.random.default_rng(1).integers(0, 256, (5, height, width, 3)).astype(np.uint8)
    with Client(own_server.target) as client:
        served = client.predict(pixels, model="onnx").probabilities
        relu = client.feature_map(pixels, model="onnx", layer="features.0", pre_activation=True)
        strided = client.feature_map(pixels, model="onnx", layer="features.2")
        filters = client.filters("features.0", model="onnx")
        models = {summary.name: summary for summary in client.list_models()}
    inputs = (pixels.astype(np.float32) * np.float32(SCALE) + np.float32(OFFSET)).transpose(
        0, 3, 1, 2
    )
    logits, c1, r1, c2 = onnx_source(own["onnx"], ["c1", "r1", "c2"]).run(None, {"input": inputs})
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(served, softmax / softmax.sum(axis=1, keepdims=True), atol=1e-5)
    nhwc = (0, 2, 3, 1)
    np.testing.assert_allclose(relu.activations, r1.transpose(nhwc), atol=1e-5)
    np.testing.assert_allclose(relu.pre_activations, c1.transpose(nhwc), atol=1e-5)
    np.testing.assert_allclose(strided.activations, c2.transpose(nhwc), atol=1e-5)
    assert relu.layer.activation == "relu" and strided.layer.activation == "linear"
    assert strided.layer.output_shape == (9, 11, 6)  # ⌊(20 − 3) / 2⌋ + 1, ⌊(24 − 3) / 2⌋ + 1
    weights = numpy_helper.to_array(next(w for w in onnx.load(own["onnx"]).graph.initializer
                                         if w.name == "w1"))  # fmt: skip
    np.testing.assert_array_equal(filters.kernels, weights.transpose(2, 3, 1, 0))
    digest = artifact.sha256_file(own["onnx"])
    assert (
        models["onnx"].origin
        == f"imported from net.onnx (onnx, sha256 {digest}, producer pytorch 2.5.0)"
    )
    assert models["folder"].origin == f"trained by convserve on {own['folder']}"


def test_an_imported_onnx_model_is_explained_by_occlusion(own, own_server) -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (2, *ONNX_SHAPE[1:], 3)).astype(np.uint8)
    with Client(own_server.target) as client:
        result = client.explain(pixels, model="onnx")
        with pytest.raises(InvalidArgument, match="method occlusion, which works on any model"):
            client.explain(pixels, model="onnx", method="gradcam")
    assert result.method == "occlusion"
    assert result.heatmaps.shape == (2, *ONNX_SHAPE[1:])
    assert (result.heatmaps.reshape(2, -1).max(axis=1) > 0).all()


def test_an_imported_keras_model_answers_as_keras_with_grad_cam(own, own_server) -> None:
    import keras

    pixels = np.random.default_rng(3).integers(0, 256, (4, 24, 20, 3)).astype(np.uint8)
    with Client(own_server.target) as client:
        served = client.predict(pixels, model="keras").probabilities
        stem = client.feature_map(pixels, model="keras", layer="stem", pre_activation=True)
        explained = client.explain(pixels, model="keras")
        info = client.metadata("keras")
    source = keras.models.load_model(own["keras"], compile=False)
    inputs = pixels.astype(np.float32) * np.float32(SCALE) + np.float32(OFFSET)
    logits = source.predict(inputs, verbose=0)
    np.testing.assert_allclose(served, keras.ops.softmax(logits).numpy(), atol=1e-5)
    taps = keras.Model(source.input, [source.get_layer("stem").output,
                                      source.get_layer("stem_relu").output])  # fmt: skip
    convolved, activated = taps.predict(inputs, verbose=0)
    np.testing.assert_allclose(stem.pre_activations, convolved, atol=1e-5)
    np.testing.assert_allclose(stem.activations, activated, atol=1e-5)
    assert stem.layer.activation == "relu"
    assert explained.method == "gradcam" and explained.layer.name == "down"
    assert explained.heatmaps.shape == (4, 24, 20)
    assert info.metadata["origin"]["producer"].startswith("keras ")
    assert info.metadata["origin"]["output"] == "logits (convserve added the softmax)"


def _onnx(edit: Any) -> Any:
    """A writer of net.onnx: the example classifier, with `edit` applied to it."""

    def write(directory: Path) -> Path:
        model = onnx.load(onnx_classifier(directory / "net.onnx"))
        edit(model)
        onnx.save(model, directory / "net.onnx")
        return directory / "net.onnx"

    return write


def _dimension(value: onnx.ValueInfoProto, index: int, size: int | str) -> None:
    dim = value.type.tensor_type.shape.dim[index]
    dim.Clear()
    if isinstance(size, int):
        dim.dim_value = size
    else:
        dim.dim_param = size


def _extra_input(model: onnx.ModelProto) -> None:
    model.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["N", 2]))


def _unknown_operator(model: onnx.ModelProto) -> None:
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    model.graph.node.insert(
        0, helper.make_node("Frobnicate", ["input"], ["ignored"], domain="com.example")
    )


def _not_onnx(directory: Path) -> Path:
    (directory / "net.onnx").write_bytes(b"not onnx")
    return directory / "net.onnx"


def _keras(outputs: int, inputs: int = 1) -> Any:
    """A writer of net.keras: a small functional model of `inputs` inputs and `outputs` classes."""

    def write(directory: Path) -> Path:
        import keras

        images = [keras.Input((8, 8, 3)) for _ in range(inputs)]
        x = images[0] if inputs == 1 else keras.layers.Add()(images)
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(x))
        keras.Model(images, keras.layers.Dense(outputs)(x)).save(directory / "net.keras")
        return directory / "net.keras"

    return write


BAD_IMPORTS = {
    "onnx: several inputs": (_onnx(_extra_input), r"2 graph inputs \(input, extra\)"),
    "onnx: dynamic height": (
        _onnx(lambda model: _dimension(model.graph.input[0], 2, "H")),
        r"\[N, 3, H, 24\]: expected a fixed height",
    ),
    "onnx: fixed batch": (
        _onnx(lambda model: _dimension(model.graph.input[0], 0, 1)),
        "has a fixed batch size 1, expected a dynamic one",
    ),
    "onnx: other classes": (
        _onnx(lambda model: _dimension(model.graph.output[0], 1, 5)),
        "has 5 classes, expected 3",
    ),
    "onnx: an operator ONNX Runtime lacks": (_onnx(_unknown_operator), "cannot run it"),
    "not an onnx file": (_not_onnx, "not an ONNX model"),
    "keras: two inputs": (_keras(3, inputs=2), "2 inputs; expected one image input"),
    "keras: other classes": (
        _keras(4),
        r"outputs \[\[None, 4\]\]; expected one output \[batch, 3\]",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_IMPORTS))
def test_a_model_that_cannot_be_served_is_refused_before_any_version(
    own, own_server, tmp_path: Path, case: str
) -> None:
    write, message = BAD_IMPORTS[case]
    with pytest.raises(ExportError, match=message):
        import_model(write(tmp_path), name="refused", classes=EASY, models_dir=own["models"])
    assert not (own["models"] / "refused").exists()
    with Client(own_server.target) as client:
        assert [m.name for m in client.list_models()] == ["folder", "keras", "onnx"]
        answer = client.predict(np.zeros((1, SIDE, SIDE, 3), np.uint8), model="folder")
        assert answer.labels.shape == (1,)
