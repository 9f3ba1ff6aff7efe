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
from training.report import REPORT_DIR, class_figures, write_report

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
    epochs_run: int = 0
    # Why fitting ended before config.epochs ("" if it did not): early stopping, time budget.
    stopped: str = ""
    best_epoch: int = 0  # 1-based: the epoch whose weights were kept (0: the last)
    data_source: str = ""  # the directory the images were read from
    # The test split and the model's answers on it, for the evaluation report.
    test_images: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    test_probabilities: np.ndarray | None = None


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 pixels [N, 28, 28] → the model's input, float32 [N, 28, 28, 1] scaled to [0, 1]."""
    return (images.astype(np.float32) * np.float32(PIXEL_SCALE))[..., np.newaxis]


def fit(
    config: TrainConfig, *, data_dir: str | None = None, verbose: int | None = None
) -> TrainResult:
    """Train on the training split (its last validation_split held out for validation), then
    evaluate on the test split.

    The same config (seed included) on the same machine gives the same weights and accuracy,
    unless a time budget (max_minutes) cuts the epochs: that depends on the machine's speed.
    """
    config.check()
    infer_shapes(config.model, len(data.resolve_classes(config.classes)))  # fail before loading
    train_set = data.load(
        "train", data_dir=data_dir, classes=config.classes, limit=config.train_limit
    )
    test_set = data.load("test", data_dir=data_dir, classes=config.classes, limit=config.test_limit)

    import keras
    import tensorflow as tf

    from training.plan import Plan

    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    n_classes = len(train_set.class_names)
    model = build_model(config.model, n_classes)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    images, labels = preprocess(train_set.images), train_set.labels.astype(np.int32)
    held_out = int(len(images) * config.validation_split)
    fitted = len(images) - held_out
    validation = (images[fitted:], labels[fitted:]) if held_out else None
    plan = Plan(config, steps_per_epoch=-(-fitted // config.batch_size), verbose=verbose)
    callbacks: list[keras.callbacks.Callback] = [plan]
    if validation is not None:
        # Under one-cycle, validation accuracy swings while the rate is high: watch it only in
        # the second half, where the rate comes down (a 24-epoch run stopped at 13 otherwise).
        early = keras.callbacks.EarlyStopping(
            "val_accuracy",
            patience=config.patience or config.epochs,
            restore_best_weights=True,
            start_from_epoch=config.epochs // 2 if config.schedule == "one_cycle" else 0,
        )
        callbacks.append(early)
    started = time.perf_counter()
    history = model.fit(
        _pipeline(images[:fitted], labels[:fitted], config),
        validation_data=validation,
        epochs=config.epochs,
        verbose=verbose,
        callbacks=callbacks,
        shuffle=False,  # the pipeline shuffles
    )
    fit_seconds = time.perf_counter() - started
    epochs_run = len(history.history["loss"])
    stopped = plan.stopped
    if validation is not None and early.stopped_epoch:
        stopped = f"early stopping: no better validation accuracy for {config.patience} epochs"
    test_images = preprocess(test_set.images)
    probabilities = model.predict(test_images, batch_size=1024, verbose=0)
    picked = probabilities[np.arange(len(probabilities)), test_set.labels]
    test_loss = float(-np.log(np.clip(picked, 1e-7, 1.0)).mean())  # Keras's clipping
    test_accuracy = float((probabilities.argmax(axis=1) == test_set.labels).mean())
    return TrainResult(
        model=model,
        config=config,
        class_names=train_set.class_names,
        history={key: [float(v) for v in values] for key, values in history.history.items()}
        | {"learning_rate": plan.rates},
        test_loss=test_loss,
        test_accuracy=test_accuracy,
        train_examples=len(train_set),
        test_examples=len(test_set),
        fit_seconds=fit_seconds,
        epochs_run=epochs_run,
        stopped=stopped,
        best_epoch=early.best_epoch + 1 if validation is not None else epochs_run,
        data_source=str(train_set.source),
        test_images=test_set.images,
        test_labels=test_set.labels,
        test_probabilities=probabilities,
    )


def _pipeline(images: np.ndarray, labels: np.ndarray, config: TrainConfig) -> Any:
    """Shuffled batches, augmented per batch when the config asks (flips, shifts)."""
    import keras
    import tensorflow as tf

    dataset = (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .shuffle(len(images), seed=config.seed)
        .batch(config.batch_size)
    )
    layers = []
    if config.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=config.seed))
    if config.shift:
        # Nearest, not bilinear: a fractional shift must not blur what the model learns from.
        layers.append(keras.layers.RandomTranslation(
            config.shift, config.shift, fill_mode="constant", interpolation="nearest",
            seed=config.seed,
        ))  # fmt: skip
    if layers:
        augment = keras.Sequential(layers)
        dataset = dataset.map(lambda x, y: (augment(x, training=True), y))
    return dataset.prefetch(2)


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
    versions = {
        "python": platform.python_version(),
        "machine": f"{os.cpu_count()} CPUs ({platform.machine()}, {platform.system()})",
    }
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
            "data_source": result.data_source,
            "fit_seconds": round(result.fit_seconds, 3),
            "epochs_run": result.epochs_run,
            "stopped": result.stopped,
            "best_epoch": result.best_epoch,
            "history": result.history,
        },
        "evaluation": {
            "test_accuracy": result.test_accuracy,
            "test_loss": result.test_loss,
            "test_examples": result.test_examples,
            **(
                class_figures(
                    result.test_labels,
                    result.test_probabilities.argmax(axis=1),
                    result.class_names,
                )
                if result.test_labels is not None and result.test_probabilities is not None
                else {}
            ),
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


def export(
    result: TrainResult, models_dir: str | os.PathLike[str], name: str, *, report: bool = True
) -> Path:
    """Write models/<name>/<version>/ (the next integer version) and return its path; with
    `report`, also the evaluation report in its report/ directory (see training.report).

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
            if report:
                write_report(result, staging / REPORT_DIR, metadata)
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
    report: bool = True,
) -> tuple[Path, TrainResult]:
    """Fit, evaluate and export; returns the new version's directory and the fit's figures."""
    check_name(name)
    result = fit(config, data_dir=data_dir, verbose=verbose)
    return export(result, models_dir, name, report=report), result
