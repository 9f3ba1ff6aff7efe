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
DENSE = Layer("dense", "Dense", (3136,), (3,), 9411)


def _publish(models_dir: Path, name: str = "shoes") -> Path:
    def build(directory: Path, version: int) -> Metadata:
        model = directory / artifact.ONNX_FILE
        model.write_bytes(b"graph")
        return Metadata(
            name=name, version=version, classes=("Sandal", "Sneaker", "Ankle boot"),
            input=TensorSpec("images", (28, 28, 1)), output=TensorSpec("probabilities", (3,)),
            preprocessing=Preprocessing.for_channels(1, 1 / 255), files=(FileEntry.of(model),),
            layers=(CONV, DENSE), parameters=9451, created_at="2026-11-30T00:00:00+00:00",
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
    assert metadata.version == 2 and metadata.layers == (CONV, DENSE)
    assert metadata.preprocessing == Preprocessing(1 / 255, 0.0, "grayscale", "bilinear")
    assert metadata.evaluation == {"test_accuracy": 0.9}
    on_disk = json.loads((second / artifact.METADATA_FILE).read_text())
    assert on_disk["format_version"] == artifact.FORMAT_VERSION
    assert on_disk["layers"][0]["padding_amount"] == [[1, 1], [1, 1]]
    assert not [p for p in (tmp_path / "shoes").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format_version=7), "format_version 7, this convserve reads 1 and 2"),
        (lambda d: d.pop("classes"), "missing 'classes'"),
        (lambda d: d["input"].update(shape=[28, 28]), r"input.shape \[28, 28\], expected"),
        (lambda d: d.update(version="1"), "version is '1', expected a JSON integer"),
        (lambda d: d["layers"][0].update(padding_amount=[1, 1]), "padding_amount"),
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
