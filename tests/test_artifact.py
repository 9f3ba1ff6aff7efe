"""The artifact format: what `publish` writes, `read` gives back; what it cannot serve, it
refuses with a message naming the file and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from convserve import artifact
from convserve.artifact import (
    ArtifactError,
    FileEntry,
    Layer,
    Metadata,
    Preprocessing,
    TensorSpec,
)

CONV = Layer("conv2d", "Conv2D", (28, 28, 1), (28, 28, 4), 40, filters=4, kernel_size=(3, 3),
             strides=(1, 1), padding="same", padding_amount=(1, 1, 1, 1), dilation_rate=(1, 1),
             activation="relu")  # fmt: skip
POOL = Layer("average_pooling2d", "AveragePooling2D", (28, 28, 4), (14, 14, 4), 0,
             kernel_size=(3, 3), strides=(2, 2), padding="same", padding_amount=(0, 1, 0, 1),
             dilation_rate=(1, 1))  # fmt: skip
DENSE = Layer("dense", "Dense", (784,), (3,), 2355)


def _publish(models_dir: Path, name: str = "shoes") -> Path:
    def build(directory: Path, version: int) -> Metadata:
        model = directory / artifact.ONNX_FILE
        model.write_bytes(b"graph")
        return Metadata(
            name=name, version=version, classes=("Sandal", "Sneaker", "Ankle boot"),
            input=TensorSpec("images", (28, 28, 1)), output=TensorSpec("probabilities", (3,)),
            preprocessing=Preprocessing.for_channels(1, 1 / 255), files=(FileEntry.of(model),),
            layers=(CONV, POOL, DENSE), parameters=2395, created_at="2026-11-30T00:00:00+00:00",
            evaluation={"test_accuracy": 0.9},
        )  # fmt: skip

    return artifact.publish(models_dir, name, build)


def _edit(path: Path, change: Any) -> None:
    data = json.loads((path / artifact.METADATA_FILE).read_text())
    change(data)
    (path / artifact.METADATA_FILE).write_text(json.dumps(data))


def test_what_publish_writes_read_gives_back_as_the_next_version(tmp_path: Path) -> None:
    first, second = _publish(tmp_path), _publish(tmp_path)
    assert (first.name, second.name) == ("1", "2")
    metadata = artifact.read(second)
    assert metadata.version == 2 and metadata.layers == (CONV, POOL, DENSE)
    assert metadata.preprocessing == Preprocessing(1 / 255, 0.0, "grayscale", "bilinear")
    assert metadata.evaluation == {"test_accuracy": 0.9}
    on_disk = json.loads((second / artifact.METADATA_FILE).read_text())
    assert on_disk["format_version"] == artifact.FORMAT_VERSION
    assert on_disk["layers"][0]["padding_amount"] == [[1, 1], [1, 1]]
    assert on_disk["layers"][1] == {
        "name": "average_pooling2d", "type": "AveragePooling2D", "input_shape": [28, 28, 4],
        "output_shape": [14, 14, 4], "parameters": 0, "kernel_size": [3, 3], "strides": [2, 2],
        "padding": "same", "padding_amount": [[0, 1], [0, 1]], "dilation_rate": [1, 1],
    }  # fmt: skip
    assert on_disk["layers"][2] == {
        "name": "dense", "type": "Dense", "input_shape": [784], "output_shape": [3],
        "parameters": 2355,
    }  # fmt: skip
    assert not [p for p in (tmp_path / "shoes").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format_version=7), "format_version 7, this convserve reads 1 and 2"),
        (lambda d: d.pop("classes"), "missing 'classes'"),
        (lambda d: d["input"].update(shape=[28, 28]), r"input.shape \[28, 28\], expected"),
        (lambda d: d.update(version="1"), "version is '1', expected a JSON integer"),
        (lambda d: d["layers"][0].update(padding_amount=[1, 1]), "padding_amount"),
        (lambda d: d["layers"][0].pop("kernel_size"), r"layers\[0\]: missing 'kernel_size'"),
        (lambda d: d["layers"][1].pop("strides"), r"layers\[1\]: missing 'strides'"),
        (lambda d: d["output"].update(shape=[4]), "does not match the 3 classes"),
        (lambda d: d.update(version=2), "describes shoes version 2, but lives in shoes/1"),
        (lambda d: d["files"][0].update(sha256="0" * 64), "a partial copy or a replaced file"),
        (lambda d: d["files"][0].update(path="../1/model.onnx"), "expected a file name"),
    ],
)
def test_read_refuses_what_cannot_be_served(tmp_path: Path, change: Any, message: str) -> None:
    path = _publish(tmp_path)
    _edit(path, change)
    with pytest.raises(ArtifactError, match=message) as refused:
        artifact.read(path)
    assert str(path) in str(refused.value)


def test_a_pooling_layer_written_before_pooling_windows_reads_without_one(
    tmp_path: Path,
) -> None:
    path = _publish(tmp_path)
    window = ("kernel_size", "strides", "padding", "padding_amount", "dilation_rate")
    _edit(path, lambda d: [d["layers"][1].pop(key) for key in window])
    pool = artifact.read(path).layers[1]
    assert pool == Layer("average_pooling2d", "AveragePooling2D", (28, 28, 4), (14, 14, 4), 0)
    assert not pool.has_window
    assert pool.describe() == "average_pooling2d AveragePooling2D 28x28x4 → 14x14x4"


def test_layers_describe_themselves_in_one_line() -> None:
    assert CONV.describe() == (
        "conv2d Conv2D(4) 28x28x1 → 28x28x4, kernel 3x3, strides 1x1, dilation 1x1, "
        "padding same [1, 1, 1, 1], activation relu"
    )
    assert POOL.describe() == (
        "average_pooling2d AveragePooling2D 28x28x4 → 14x14x4, pool 3x3, strides 2x2, "
        "padding same [0, 1, 0, 1]"
    )
    assert DENSE.describe() == "dense Dense 784 → 3"


def test_a_format_1_version_reads_with_its_one_file(tmp_path: Path) -> None:
    """Versions trained before ONNX serving: `convserve export-onnx` reads them."""
    path = _publish(tmp_path)
    (path / artifact.ONNX_FILE).rename(path / artifact.KERAS_FILE)
    keras_file = FileEntry.of(path / artifact.KERAS_FILE)
    _edit(path, lambda d: d.update(format_version=1, model_file=keras_file.to_dict()))
    metadata = artifact.read(path)
    assert metadata.files == (keras_file,)
    assert metadata.file(artifact.KERAS_FILE) == keras_file
    assert metadata.file(artifact.ONNX_FILE) is None


def test_bad_names_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"model name '\.\./x'"):
        _publish(tmp_path, "../x")
    assert not any(tmp_path.iterdir())
