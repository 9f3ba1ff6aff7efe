"""Fit a configured model on Fashion-MNIST, evaluate it, and export a versioned artifact."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training import data
from training.model import TrainConfig, build_model, infer_shapes
from training.reference import output_size, same_padding

if TYPE_CHECKING:
    import keras

__all__ = [
    "ARTIFACT_FORMAT",
    "METADATA_FILE",
    "MODEL_FILE",
    "ExportError",
    "TrainResult",
    "check_name",
    "describe_layers",
    "export",
    "fit",
    "preprocess",
    "sha256_file",
    "train",
]

ARTIFACT_FORMAT = 1
MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
PIXEL_SCALE = 1.0 / 255.0


class ExportError(RuntimeError):
    """The trained model does not match what its configuration and the formula say."""


@dataclass
class TrainResult:
    """A fitted model with what its metadata.json records about how it came to be."""

    model: keras.Model
    config: TrainConfig
    class_names: tuple[str, ...]
    history: dict[str, list[float]]
    test_loss: float
    test_accuracy: float
    train_examples: int
    test_examples: int
    fit_seconds: float


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 pixels [N, 28, 28] → the model's input, float32 [N, 28, 28, 1] scaled to [0, 1]."""
    return (images.astype(np.float32) * np.float32(PIXEL_SCALE))[..., np.newaxis]


def fit(
    config: TrainConfig, *, data_dir: str | None = None, verbose: int | None = None
) -> TrainResult:
    """Train on the training split (validation_split held out), then evaluate on the test split.

    The same config (seed included) on the same machine gives the same weights and accuracy.
    """
    infer_shapes(config.model, len(data.resolve_classes(config.classes)))  # fail before loading
    train_set = data.load(
        "train", data_dir=data_dir, classes=config.classes, limit=config.train_limit
    )
    test_set = data.load("test", data_dir=data_dir, classes=config.classes, limit=config.test_limit)

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    n_classes = len(train_set.class_names)
    model = build_model(config.model, n_classes)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    started = time.perf_counter()
    history = model.fit(
        preprocess(train_set.images),
        keras.utils.to_categorical(train_set.labels, n_classes),
        validation_split=config.validation_split,
        epochs=config.epochs,
        batch_size=config.batch_size,
        verbose=verbose,
    )
    fit_seconds = time.perf_counter() - started
    test_loss, test_accuracy = model.evaluate(
        preprocess(test_set.images),
        keras.utils.to_categorical(test_set.labels, n_classes),
        batch_size=1024,
        verbose=0,
    )
    return TrainResult(
        model=model,
        config=config,
        class_names=train_set.class_names,
        history={key: [float(v) for v in values] for key, values in history.history.items()},
        test_loss=float(test_loss),
        test_accuracy=float(test_accuracy),
        train_examples=len(train_set),
        test_examples=len(test_set),
        fit_seconds=fit_seconds,
    )


def describe_layers(model: keras.Model) -> list[dict[str, Any]]:
    """Every layer's name, type and shapes; for Conv2D also its kernel, strides, padding, dilation.

    Each conv layer's output shape is checked against O = floor((I − K_eff + 2P) / S) + 1.
    """
    layers = []
    for layer in model.layers:
        if layer.__class__.__name__ == "InputLayer":
            continue
        input_shape = [int(d) for d in layer.input.shape[1:]]
        output_shape = [int(d) for d in layer.output.shape[1:]]
        entry: dict[str, Any] = {
            "name": layer.name,
            "type": layer.__class__.__name__,
            "input_shape": input_shape,
            "output_shape": output_shape,
            "parameters": int(layer.count_params()),
        }
        if entry["type"] == "Conv2D":
            entry |= _describe_conv(layer, input_shape, output_shape)
        layers.append(entry)
    return layers


def _describe_conv(layer: Any, input_shape: list[int], output_shape: list[int]) -> dict[str, Any]:
    kernel, strides, dilation = layer.kernel_size, layer.strides, layer.dilation_rate
    padding_amount = [
        list(same_padding(size, k, s, d)) if layer.padding == "same" else [0, 0]
        for size, k, s, d in zip(input_shape[:2], kernel, strides, dilation, strict=True)
    ]
    expected = [
        output_size(size, k, s, layer.padding, d)
        for size, k, s, d in zip(input_shape[:2], kernel, strides, dilation, strict=True)
    ] + [layer.filters]
    if expected != output_shape:
        raise ExportError(
            f"layer {layer.name}: Keras output shape {output_shape} differs from the "
            f"output-size formula's {expected}"
        )
    return {
        "filters": int(layer.filters),
        "kernel_size": list(kernel),
        "strides": list(strides),
        "padding": layer.padding,
        "padding_amount": padding_amount,
        "dilation_rate": list(dilation),
        "activation": layer.activation.__name__,
    }


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("tensorflow", "keras", "numpy", "convserve"):
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions


def build_metadata(
    result: TrainResult, name: str, version: int, model_path: Path
) -> dict[str, Any]:
    """The self-description a server needs to serve the model and a person needs to trust it."""
    config = result.config
    return {
        "format_version": ARTIFACT_FORMAT,
        "name": name,
        "version": version,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "classes": list(result.class_names),
        "input": {"name": "images", "shape": list(config.model.input_shape), "dtype": "float32"},
        "preprocessing": {
            "description": "callers send pixels 0..255; the model sees pixels * scale + offset",
            "scale": PIXEL_SCALE,
            "offset": 0.0,
        },
        "output": {"name": "probabilities", "shape": [len(result.class_names)], "dtype": "float32"},
        "training": {
            "config": config.to_dict(),
            "seed": config.seed,
            "train_examples": result.train_examples,
            "fit_seconds": round(result.fit_seconds, 3),
            "history": result.history,
        },
        "evaluation": {
            "test_accuracy": result.test_accuracy,
            "test_loss": result.test_loss,
            "test_examples": result.test_examples,
        },
        "parameters": int(result.model.count_params()),
        "framework": _versions(),
        "model_file": {
            "path": MODEL_FILE,
            "sha256": sha256_file(model_path),
            "bytes": model_path.stat().st_size,
        },
        "layers": describe_layers(result.model),
    }


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def export(result: TrainResult, models_dir: str | os.PathLike[str], name: str) -> Path:
    """Write models/<name>/<version>/ (the next integer version) and return its path.

    Everything is written into a hidden temp dir beside it, then renamed into place, so a
    crash never leaves a half-written version and a server never sees one.
    """
    check_name(name)
    model_root = Path(models_dir) / name
    model_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_root))
    try:
        model_path = staging / MODEL_FILE
        result.model.save(model_path)
        version = _next_version(model_root)
        while True:
            metadata = build_metadata(result, name, version, model_path)
            (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
            for path in (model_path, staging / METADATA_FILE, staging):
                _fsync(path)
            target = model_root / str(version)
            try:
                os.rename(staging, target)  # fails if another export took this version
            except OSError:
                if not target.exists():
                    raise
                version = _next_version(model_root)
                continue
            _fsync(model_root)
            return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_name(name: str) -> None:
    """Model names become directory names and API identifiers: keep them plain."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise ExportError(
            f"model name {name!r}: expected 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )


def _next_version(model_root: Path) -> int:
    versions = [int(p.name) for p in model_root.iterdir() if p.name.isdigit() and p.is_dir()]
    return max(versions, default=0) + 1


def train(
    config: TrainConfig,
    *,
    name: str,
    models_dir: str | os.PathLike[str],
    data_dir: str | None = None,
    verbose: int | None = None,
) -> tuple[Path, TrainResult]:
    """Fit, evaluate and export; returns the new version's directory and the fit's figures."""
    check_name(name)
    result = fit(config, data_dir=data_dir, verbose=verbose)
    return export(result, models_dir, name), result
