"""Import a classifier trained elsewhere (an ONNX file, or a Keras .keras functional model) as
the next version of MODELS_DIR/NAME: the same artifact as a trained model, so the server, hot
reload, version policies and every RPC treat it alike.

Everything that cannot be served is refused, with what was found, before a version exists.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convserve import artifact
from convserve.artifact import KERAS_FILE, FileEntry, Layer, Metadata, Preprocessing
from training.errors import ExportError
from training.export import random_pixels, versions, write_served_form
from training.layers import activation_name, describe_layers

__all__ = ["FORMATS", "import_model"]

FORMATS = (".onnx", ".keras")
LOGITS = "logits (convserve added the softmax)"


@dataclass(frozen=True)
class _Served:
    """What an importer wrote into the version and found in the source."""

    input_shape: tuple[int, int, int]
    files: list[FileEntry]
    layers: list[Layer]
    parameters: int
    origin: dict[str, str]  # what metadata.json's origin adds about the source


def import_model(
    source: Path,
    *,
    name: str,
    classes: Sequence[str],
    models_dir: str | os.PathLike[str],
    scale: float = 1.0,
    offset: float = 0.0,
) -> Path:
    """Publish `source` as the next version of `name`, whose callers' pixels 0..255 become
    pixels · scale + offset before the model; returns the version's directory."""
    artifact.check_name(name)
    classes = tuple(classes)
    if len(classes) < 2 or len(set(classes)) != len(classes) or not all(classes):
        raise ExportError(f"classes {list(classes)}: expected at least 2 distinct names")
    if source.suffix.lower() not in FORMATS:
        raise ExportError(f"{source}: expected a {' or a '.join(FORMATS)} file")
    try:
        digest = artifact.sha256_file(source)
    except OSError as exc:
        raise ExportError(f"{source}: cannot read it: {exc}") from None
    origin = {"kind": "imported", "file": source.name, "sha256": digest,
              "format": source.suffix.lower().lstrip(".")}  # fmt: skip
    served = _onnx if origin["format"] == "onnx" else _keras

    def build(directory: Path, version: int) -> Metadata:
        found = served(source, directory, len(classes), scale, offset)
        return Metadata.new(
            name=name,
            version=version,
            classes=classes,
            input_shape=found.input_shape,
            preprocessing=Preprocessing.for_channels(found.input_shape[2], scale, offset),
            files=found.files,
            layers=found.layers,
            parameters=found.parameters,
            framework=versions(),
            origin=origin | found.origin,
        )

    return artifact.publish(models_dir, name, build)


def _onnx(source: Path, directory: Path, classes: int, scale: float, offset: float) -> _Served:
    from training.onnx_import import write_onnx_served_form

    found = write_onnx_served_form(source, directory, classes, Preprocessing(scale, offset))
    origin = {
        "producer": found.producer,
        "opset": str(found.opset),
        "input_layout": found.layout,
        "output": LOGITS if found.softmax_added else "probabilities",
    }
    return _Served(found.input_shape, found.files, found.layers, found.parameters, origin)


def _keras(source: Path, directory: Path, classes: int, scale: float, offset: float) -> _Served:
    """A Keras model: its served form as for a trained model (ONNX graphs checked against
    Keras, Grad-CAM where the gradients export), plus model.keras for `convserve export-onnx`."""
    import keras

    try:
        model = keras.models.load_model(source, compile=False)
    except Exception as exc:  # Keras raises many kinds for a file it cannot read
        raise ExportError(f"{source}: Keras cannot load it: {exc}") from None
    shape = _keras_input_shape(source, model)
    outputs = model.outputs
    if len(outputs) != 1 or len(outputs[0].shape) != 2 or outputs[0].shape[1] != classes:
        found = [list(output.shape) for output in outputs]
        raise ExportError(
            f"{source}: outputs {found}; expected one output [batch, {classes}] (one score per "
            "class named by --classes)"
        )
    softmax_added = not _ends_in_softmax(model)
    if softmax_added:
        model = keras.Model(model.inputs[0], keras.layers.Softmax(name="probabilities")(outputs[0]))
    preprocessing = Preprocessing.for_channels(shape[2], scale, offset)
    files = write_served_form(model, directory, preprocessing, random_pixels(shape))
    model.save(directory / KERAS_FILE)
    origin = {
        "producer": f"keras {_keras_version(source)}".strip(),
        "input_layout": "NHWC",
        "output": LOGITS if softmax_added else "probabilities",
    }
    files = [FileEntry.of(directory / KERAS_FILE), *files]
    return _Served(shape, files, describe_layers(model), int(model.count_params()), origin)


def _keras_input_shape(source: Path, model: Any) -> tuple[int, int, int]:
    if len(model.inputs) != 1:
        raise ExportError(f"{source}: {len(model.inputs)} inputs; expected one image input")
    dims = list(model.inputs[0].shape)
    if len(dims) != 4 or None in dims[1:] or dims[3] not in (1, 3):
        raise ExportError(
            f"{source}: input shape {dims}; expected [batch, height, width, channels] with a "
            "fixed height and width and 1 or 3 channels (channels last)"
        )
    return int(dims[1]), int(dims[2]), int(dims[3])


def _ends_in_softmax(model: Any) -> bool:
    return activation_name(model.layers[-1]) == "softmax"


def _keras_version(source: Path) -> str:
    """The Keras version that saved `source` (a .keras file is a zip with metadata.json)."""
    try:
        with zipfile.ZipFile(source) as archive:
            return str(json.loads(archive.read("metadata.json")).get("keras_version", ""))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return ""
