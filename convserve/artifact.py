"""What a model artifact is: MODELS_DIR/NAME/VERSION/ with its files and metadata.json.

One owner for the format: the file names, the graphs' tensor names, the format version, the
metadata schema as typed structures and its builder (`Metadata.new`, used by training and
import), the one writer (`publish`) and the one reader that validates (`read`, used by the
server), and the sha256 of every file they name.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CLASSES",
    "CLASS_INDEX",
    "COLORS",
    "EXPLAIN_FILE",
    "FEATURES_FILE",
    "FILTERS_FILE",
    "FORMAT_VERSION",
    "GRADIENT_METHODS",
    "INPUT_NAME",
    "INTERPOLATIONS",
    "KERAS_FILE",
    "METADATA_FILE",
    "ONNX_FILE",
    "ONNX_LOG_ERRORS_ONLY",
    "PIXELS",
    "PROBABILITIES",
    "ArtifactError",
    "FileEntry",
    "Layer",
    "Metadata",
    "Preprocessing",
    "TensorSpec",
    "bias",
    "check_name",
    "created_now",
    "heatmap",
    "kernel",
    "pre_activation",
    "publish",
    "read",
    "sha256_file",
]

# 2: the served form is ONNX (`files` names every file); 1: model.keras only, read so that
# `convserve export-onnx` can bring such a version up to date.
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
METADATA_FILE = "metadata.json"
KERAS_FILE = "model.keras"  # the Keras model training fitted (the server never reads it)
# What the server runs, all taking pixels 0..255 NHWC float32 named PIXELS with the
# preprocessing inside the graph:
ONNX_FILE = "model.onnx"  # → PROBABILITIES [N, classes]
FEATURES_FILE = "features.onnx"  # → "<layer>" for each layer with [N, H, W, C] output, and
#   pre_activation(layer) for each conv layer: the convolution plus bias before its activation
EXPLAIN_FILE = "explain.onnx"  # fixed batch; + CLASS_INDEX int32 [B] (-1: the predicted
#   class) → PROBABILITIES, CLASSES and heatmap(layer, method) [B, H, W] per GRADIENT_METHODS
FILTERS_FILE = "filters.npz"  # kernel(layer) [KH, KW, C_in, C_out], bias(layer) [C_out]
# The graphs' tensor names.
PIXELS = "pixels"
PROBABILITIES = "probabilities"
CLASS_INDEX = "class_index"
CLASSES = "classes"
GRADIENT_METHODS = ("gradcam", "hirescam")
# The input's name in metadata.json: what Open Inference Protocol callers name their tensor.
INPUT_NAME = "images"
# ONNX Runtime's log level for the artifact's graphs: errors only. Its static shape inference
# of the heatmaps' Resize rounds 24 x 28/24 down to 27 and warns at every load, though the
# outputs are 28 (and checked).
ONNX_LOG_ERRORS_ONLY = 3


def pre_activation(layer: str) -> str:
    """features.onnx's name of a conv layer's convolution + bias, before its activation."""
    return f"{layer}.pre_activation"


def heatmap(layer: str, method: str) -> str:
    """explain.onnx's name of `layer`'s heatmaps by `method` (one of GRADIENT_METHODS)."""
    return f"{layer}.{method}"


def kernel(layer: str) -> str:
    """filters.npz's name of a conv layer's kernels."""
    return f"{layer}.kernel"


def bias(layer: str) -> str:
    """filters.npz's name of a conv layer's biases (absent for a layer without)."""
    return f"{layer}.bias"


PREPROCESSING_DESCRIPTION = (
    "callers send pixels 0..255; the model sees pixels * scale + offset; PNG/JPEG files are "
    "converted to the color and resized to the input's size with the interpolation first"
)
# An image's colour by the input's channels, and the resize filters (Pillow's names).
COLORS = {1: "grayscale", 3: "rgb"}
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


class ArtifactError(ValueError):
    """An artifact that cannot be written or served: a bad name, a missing or changed file, a
    metadata.json that is not this format. The message names the file and what was expected."""


def created_now() -> str:
    """metadata.json's `created_at` for a version written now (UTC, to the second)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_name(name: str) -> None:
    """Model names become directory names and API identifiers: keep them plain."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise ArtifactError(
            f"model name {name!r}: expected 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )


@dataclass(frozen=True)
class Layer:
    """One layer of a model. Conv2D and pooling layers carry their window (kernel_size, strides,
    padding, padding_amount, dilation_rate; a pooling layer's kernel is its pool size, its
    dilation 1x1), so that a unit's receptive field can be followed through the layers; only
    Conv2D layers carry filters and activation."""

    name: str
    type: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    parameters: int
    filters: int = 0
    kernel_size: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    padding: str = ""
    padding_amount: tuple[int, ...] = ()  # top, bottom, left, right
    dilation_rate: tuple[int, ...] = ()
    activation: str = ""

    @property
    def is_conv(self) -> bool:
        return self.type == "Conv2D"

    @property
    def has_window(self) -> bool:
        """Whether the layer slides a window (Conv2D, pooling): its kernel_size is set. Pooling
        layers of artifacts written before they recorded it have none."""
        return bool(self.kernel_size)

    def describe(self) -> str:
        """One line, e.g. `conv2d Conv2D(10) 28x28x1 → 26x26x10, kernel 3x3, strides 1x1, ...`
        or `max_pooling2d MaxPooling2D 26x26x10 → 13x13x10, pool 2x2, strides 2x2, ...`."""

        def dims(values: tuple[int, ...]) -> str:
            return "x".join(map(str, values))

        shapes = f"{dims(self.input_shape)} → {dims(self.output_shape)}"
        if not self.has_window:
            return f"{self.name} {self.type} {shapes}"
        padding = f"padding {self.padding} {list(self.padding_amount)}"
        if not self.is_conv:
            return (
                f"{self.name} {self.type} {shapes}, pool {dims(self.kernel_size)}, "
                f"strides {dims(self.strides)}, {padding}"
            )
        return (
            f"{self.name} Conv2D({self.filters}) {shapes}, kernel {dims(self.kernel_size)}, "
            f"strides {dims(self.strides)}, dilation {dims(self.dilation_rate)}, {padding}, "
            f"activation {self.activation}"
        )

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "parameters": self.parameters,
        }
        if self.is_conv:
            entry["filters"] = self.filters
        if self.has_window:
            top, bottom, left, right = self.padding_amount
            entry |= {
                "kernel_size": list(self.kernel_size),
                "strides": list(self.strides),
                "padding": self.padding,
                "padding_amount": [[top, bottom], [left, right]],
                "dilation_rate": list(self.dilation_rate),
            }
        if self.is_conv:
            entry["activation"] = self.activation
        return entry

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any], where: str) -> Layer:
        """A layer of metadata.json. A Conv2D layer has its window, filters and activation;
        another layer has a window when it has a kernel_size (pooling layers written before
        they recorded theirs have none)."""
        fields = _Fields(entry, where)
        layer = cls(
            name=fields.get("name", str),
            type=fields.get("type", str),
            input_shape=fields.shape("input_shape"),
            output_shape=fields.shape("output_shape"),
            parameters=fields.get("parameters", int),
        )
        if layer.is_conv or "kernel_size" in entry:
            layer = dataclasses.replace(
                layer,
                kernel_size=fields.shape("kernel_size", 2),
                strides=fields.shape("strides", 2),
                padding=fields.get("padding", str),
                padding_amount=_padding_amount(fields.get("padding_amount", list), where),
                dilation_rate=fields.shape("dilation_rate", 2),
            )
        if layer.is_conv:
            layer = dataclasses.replace(
                layer, filters=fields.get("filters", int), activation=fields.get("activation", str)
            )
        return layer


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: its name, shape without the batch dimension, dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any], where: str) -> TensorSpec:
        fields = _Fields(entry, where)
        return cls(fields.get("name", str), fields.shape("shape"), fields.get("dtype", str))


@dataclass(frozen=True)
class Preprocessing:
    """How callers' pixels become the model's input, recorded once for training and serving.

    Tensors: callers send pixels 0..255 of the input's shape; the model sees pixels · scale +
    offset (inside the served graph). PNG/JPEG files: converted to `color` (grayscale: ITU-R
    601-2 luma; rgb), then resized to the input's height x width with `interpolation` (Pillow's
    filter of that name), by convserve.imagefiles: the same code as when the model was trained.
    """

    scale: float
    offset: float = 0.0
    color: str = ""  # "grayscale" or "rgb"; "" for an input of other channels (tensors only)
    interpolation: str = "bilinear"

    @classmethod
    def for_channels(cls, channels: int, scale: float, offset: float = 0.0) -> Preprocessing:
        return cls(scale, offset, COLORS.get(channels, ""))

    def to_dict(self) -> dict[str, Any]:
        return {
            "description": PREPROCESSING_DESCRIPTION,
            "scale": self.scale,
            "offset": self.offset,
            "color": self.color,
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any], where: str, channels: int) -> Preprocessing:
        """Format 2 before images of any size: no color (the input's) nor interpolation."""
        fields = _Fields(entry, where)
        color = entry.get("color", COLORS.get(channels, ""))
        interpolation = entry.get("interpolation", "bilinear")
        if color != COLORS.get(channels, ""):
            raise ArtifactError(
                f"{where}: color {color!r} with {channels} input channels, expected "
                f"{COLORS.get(channels, '')!r}"
            )
        if interpolation not in INTERPOLATIONS:
            raise ArtifactError(
                f"{where}: interpolation {interpolation!r}, expected one of "
                f"{', '.join(INTERPOLATIONS)}"
            )
        return cls(fields.get("scale", float), fields.get("offset", float), color, interpolation)


@dataclass(frozen=True)
class FileEntry:
    """A file of the artifact, relative to its directory, with its sha256 and size."""

    path: str
    sha256: str
    bytes: int

    @classmethod
    def of(cls, path: Path) -> FileEntry:
        return cls(path.name, sha256_file(path), path.stat().st_size)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes}

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any], where: str) -> FileEntry:
        fields = _Fields(entry, where)
        path = fields.get("path", str)
        if Path(path).name != path or path in ("", ".", ".."):
            raise ArtifactError(f"{where}: path {path!r}, expected a file name in the version")
        return cls(path, fields.get("sha256", str), fields.get("bytes", int))

    def verify(self, directory: Path) -> None:
        """Raise unless the file is in `directory` with the recorded sha256."""
        path = directory / self.path
        if not path.is_file():
            raise ArtifactError(f"{path}: file not found (metadata.json names it)")
        digest = sha256_file(path)
        if digest != self.sha256:
            raise ArtifactError(
                f"{path}: sha256 {digest} differs from metadata.json's {self.sha256} "
                "(a partial copy or a replaced file)"
            )


@dataclass(frozen=True)
class Metadata:
    """metadata.json: what a server needs to serve the model and a person needs to trust it.

    `training`, `evaluation` and `framework` are free-form records of how the model came to
    be; everything else is checked when it is read.
    """

    name: str
    version: int
    classes: tuple[str, ...]
    input: TensorSpec
    output: TensorSpec
    preprocessing: Preprocessing
    files: tuple[FileEntry, ...]
    layers: tuple[Layer, ...]
    parameters: int
    created_at: str
    training: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    framework: dict[str, str] = field(default_factory=dict)
    # Where the model came from: {"kind": "trained", "data": ...} or {"kind": "imported",
    # "file": ..., "sha256": ..., "format": "onnx" | "keras", "producer": ...}.
    origin: dict[str, str] = field(default_factory=dict)

    @classmethod
    def new(
        cls,
        *,
        name: str,
        version: int,
        classes: Sequence[str],
        input_shape: tuple[int, ...],
        preprocessing: Preprocessing,
        files: Sequence[FileEntry],
        layers: Sequence[Layer],
        parameters: int,
        framework: dict[str, str],
        origin: dict[str, str],
        training: dict[str, Any] | None = None,
        evaluation: dict[str, Any] | None = None,
    ) -> Metadata:
        """A new version's metadata, created now: the input INPUT_NAME of `input_shape` and
        the output PROBABILITIES, one per class, as every served graph has them."""
        return cls(
            name=name,
            version=version,
            created_at=created_now(),
            classes=tuple(classes),
            input=TensorSpec(INPUT_NAME, tuple(input_shape)),
            output=TensorSpec(PROBABILITIES, (len(classes),)),
            preprocessing=preprocessing,
            files=tuple(files),
            layers=tuple(layers),
            parameters=parameters,
            training=training or {},
            evaluation=evaluation or {},
            framework=framework,
            origin=origin,
        )

    def describe_origin(self) -> str:
        """One line, e.g. `imported from net.onnx (onnx, sha256 ab12…, producer pytorch 2.5)`."""
        origin = self.origin
        if origin.get("kind") == "imported":
            producer = f", producer {origin['producer']}" if origin.get("producer") else ""
            return (
                f"imported from {origin.get('file', '?')} ({origin.get('format', '?')}, "
                f"sha256 {origin.get('sha256', '?')}{producer})"
            )
        data = origin.get("data") or self.training.get("data_source", "")
        return f"trained by convserve on {data}" if data else "trained by convserve"

    def file(self, path: str) -> FileEntry | None:
        """The entry of the artifact's file `path` (e.g. ONNX_FILE), None if it has none."""
        return next((entry for entry in self.files if entry.path == path), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "created_at": self.created_at,
            "classes": list(self.classes),
            "input": self.input.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            "output": self.output.to_dict(),
            "training": self.training,
            "evaluation": self.evaluation,
            "parameters": self.parameters,
            "framework": self.framework,
            "origin": self.origin,
            "files": [entry.to_dict() for entry in self.files],
            "layers": [layer.to_dict() for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> Metadata:
        fields = _Fields(data, where)
        version = fields.get("format_version", int)
        if version not in READABLE_FORMATS:
            raise ArtifactError(
                f"{where}: format_version {version}, this convserve reads "
                f"{' and '.join(map(str, READABLE_FORMATS))}"
            )
        # Format 1 had one file, model.keras.
        files = [fields.get("model_file", dict)] if version == 1 else fields.get("files", list)
        input_spec = TensorSpec.from_dict(fields.get("input", dict), f"{where}: input")
        if len(input_spec.shape) != 3 or min(input_spec.shape) < 1:
            raise ArtifactError(
                f"{where}: input.shape {list(input_spec.shape)}, expected [height, width, "
                "channels] of positive integers"
            )
        metadata = cls(
            name=fields.get("name", str),
            version=fields.get("version", int),
            classes=tuple(fields.get("classes", list)),
            input=input_spec,
            output=TensorSpec.from_dict(fields.get("output", dict), f"{where}: output"),
            preprocessing=Preprocessing.from_dict(
                fields.get("preprocessing", dict), f"{where}: preprocessing", input_spec.shape[2]
            ),
            files=tuple(
                FileEntry.from_dict(entry, f"{where}: files[{index}]")
                for index, entry in enumerate(files)
            ),
            layers=tuple(
                Layer.from_dict(entry, f"{where}: layers[{index}]")
                for index, entry in enumerate(fields.get("layers", list))
            ),
            parameters=int(data.get("parameters", 0)),
            created_at=str(data.get("created_at", "")),
            training=dict(data.get("training", {})),
            evaluation=dict(data.get("evaluation", {})),
            framework=dict(data.get("framework", {})),
            origin=dict(data.get("origin", {})),
        )
        if len(metadata.classes) < 2 or not all(isinstance(c, str) for c in metadata.classes):
            raise ArtifactError(f"{where}: classes must be at least 2 names")
        if metadata.output.shape != (len(metadata.classes),):
            raise ArtifactError(
                f"{where}: output.shape {list(metadata.output.shape)} does not match the "
                f"{len(metadata.classes)} classes"
            )
        return metadata


class _Fields:
    """Typed access to one JSON object, with errors that name the file and the field."""

    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        if not isinstance(data, Mapping):
            raise ArtifactError(f"{where}: expected a JSON object, got {type(data).__name__}")
        self.data, self.where = data, where

    def get(self, key: str, kind: type) -> Any:
        if key not in self.data:
            raise ArtifactError(f"{self.where}: missing {key!r}")
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ArtifactError(
                f"{self.where}: {key} is {value!r}, expected a JSON {_JSON_NAMES[kind]}"
            )
        return value

    def shape(self, key: str, length: int | None = None) -> tuple[int, ...]:
        """A list of non-negative integers (of `length` of them, if given)."""
        values = self.get(key, list)
        if length is not None and len(values) != length:
            raise ArtifactError(f"{self.where}: {key} {values} has not {length} entries")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise ArtifactError(f"{self.where}: {key} {values}, expected non-negative integers")
        return tuple(values)


_JSON_NAMES = {str: "string", int: "integer", float: "number", list: "array", dict: "object"}


def _padding_amount(value: list[Any], where: str) -> tuple[int, ...]:
    """[[top, bottom], [left, right]] → (top, bottom, left, right)."""
    flat = [v for pair in value if isinstance(pair, list) and len(pair) == 2 for v in pair]
    if len(value) != 2 or len(flat) != 4 or not all(isinstance(v, int) for v in flat):
        raise ArtifactError(
            f"{where}: padding_amount {value!r}, expected [[top, bottom], [left, right]]"
        )
    return tuple(flat)


def read(directory: Path, *, renamed: bool = False) -> Metadata:
    """The validated metadata of MODELS_DIR/NAME/VERSION, whose files are what it records.

    `renamed`: the artifact is served under another name (KServe's layouts: MODELS_DIR/VERSION
    or MODELS_DIR itself): its folder's name is checked against its version only if it is one.
    """
    path = directory / METADATA_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: cannot read it: {exc}") from exc
    metadata = Metadata.from_dict(data, str(path))
    if renamed:
        if directory.name.isdigit() and int(directory.name) != metadata.version:
            raise ArtifactError(
                f"{path}: describes version {metadata.version}, but lives in {directory.name}/"
            )
    elif str(metadata.version) != directory.name or metadata.name != directory.parent.name:
        raise ArtifactError(
            f"{path}: describes {metadata.name} version {metadata.version}, "
            f"but lives in {directory.parent.name}/{directory.name}"
        )
    for entry in metadata.files:
        entry.verify(directory)
    return metadata


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _next_version(model_root: Path) -> int:
    versions = [int(p.name) for p in model_root.iterdir() if p.name.isdigit() and p.is_dir()]
    return max(versions, default=0) + 1


def publish(
    models_dir: str | os.PathLike[str], name: str, build: Callable[[Path, int], Metadata]
) -> Path:
    """Write MODELS_DIR/NAME/VERSION (the next integer version) and return its path.

    `build(directory, version)` writes the model's files into `directory` and returns their
    metadata; `publish` writes metadata.json. Everything goes into a hidden staging directory
    that is renamed into place, so a crash never leaves a half-written version and a server
    never sees one. If another writer takes the version first, `build` runs again. If `build`
    raises, nothing is left behind (not even MODELS_DIR/NAME, if this call created it).
    """
    check_name(name)
    model_root = Path(models_dir) / name
    created = not model_root.exists()
    model_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_root))
    try:
        while True:
            version = _next_version(model_root)
            metadata = build(staging, version)
            metadata_path = staging / METADATA_FILE
            metadata_path.write_text(json.dumps(metadata.to_dict(), indent=2) + "\n")
            for path in [*(p for p in staging.iterdir() if p.is_file()), staging]:
                _fsync(path)
            target = model_root / str(version)
            try:
                os.rename(staging, target)  # fails if another writer took this version
            except OSError:
                if not target.exists():
                    raise
                continue
            _fsync(model_root)
            return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(model_root.iterdir()):
            model_root.rmdir()
