"""Fit a configured model on Fashion-MNIST or a folder of images; evaluate it on the test split."""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convserve import fashion_mnist
from convserve.artifact import Preprocessing
from training import data
from training.model import TrainConfig, build_model, infer_shapes

if TYPE_CHECKING:
    import keras

__all__ = ["PREPROCESSING", "TrainResult", "fit", "preprocess"]

PIXEL_SCALE = data.PIXEL_SCALE
PREPROCESSING = Preprocessing.for_channels(1, PIXEL_SCALE)  # Fashion-MNIST's


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
    preprocessing: Preprocessing = PREPROCESSING
    test_split: str = "Fashion-MNIST's test split"  # where the test images came from
    # The test split and the model's answers on it, for the evaluation report.
    test_images: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    test_probabilities: np.ndarray | None = None


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 pixels [N, H, W] or [N, H, W, C] → the model's input, float32 [N, H, W, C]
    scaled to [0, 1]."""
    scaled = images.astype(np.float32) * np.float32(PIXEL_SCALE)
    return scaled[..., np.newaxis] if images.ndim == 3 else scaled


def fit(
    config: TrainConfig,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    verbose: int | None = None,
) -> TrainResult:
    """Train on the training split (its last validation_split held out for validation), then
    evaluate on the test split.

    The same config (seed included) on the same machine gives the same weights and accuracy,
    unless a time budget (max_minutes) cuts the epochs: that depends on the machine's speed.
    """
    config, train_set, test_set, folder = _load_splits(config, data_dir)
    model = _compiled_model(config, len(train_set.class_names))
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    images, labels = preprocess(train_set.images), train_set.labels.astype(np.int32)
    fitted = len(images) - int(len(images) * config.validation_split)
    validation = (images[fitted:], labels[fitted:]) if fitted < len(images) else None
    plan, early = _callbacks(config, fitted, verbose, validation is not None)
    started = time.perf_counter()
    history = model.fit(
        _pipeline(images[:fitted], labels[:fitted], config),
        validation_data=validation,
        epochs=config.epochs,
        verbose=verbose,
        callbacks=[plan] if early is None else [plan, early],
        shuffle=False,  # the pipeline shuffles
    )
    fit_seconds = time.perf_counter() - started
    probabilities, test_loss, test_accuracy = _evaluate(model, test_set)
    epochs_run = len(history.history["loss"])
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
        stopped=plan.stopped
        if early is None or not early.stopped_epoch
        else f"early stopping: no better validation accuracy for {config.patience} epochs",
        best_epoch=epochs_run if early is None else early.best_epoch + 1,
        data_source=str(train_set.source),
        preprocessing=folder.preprocessing if folder else PREPROCESSING,
        test_split=folder.split if folder else TrainResult.test_split,
        test_images=test_set.images,
        test_labels=test_set.labels,
        test_probabilities=probabilities,
    )


def _load_splits(
    config: TrainConfig, data_dir: str | os.PathLike[str] | None
) -> tuple[TrainConfig, fashion_mnist.Dataset, fashion_mnist.Dataset, data.Folder | None]:
    """The training and test splits the config asks for, once the config is known to work;
    for an image folder, the config with the input shape the images settled."""
    config.check()
    if config.images:
        folder = data.scan(
            Path(config.images), image_size=config.image_size, color=config.color,
            interpolation=config.interpolation, test_split=config.test_split,
            classes=config.classes, seed=config.seed,
        )  # fmt: skip
        config = config.replace(
            image_size=folder.shape[:2],
            color=folder.preprocessing.color,
            model=dataclasses.replace(config.model, input_shape=folder.shape),
        )
        infer_shapes(config.model, len(folder.class_names))  # fail before decoding
        train_set, test_set = folder.load(config.seed, config.train_limit, config.test_limit)
        return config, train_set, test_set, folder
    classes = fashion_mnist.resolve_classes(config.classes)
    infer_shapes(config.model, len(classes))  # fail before loading
    load = functools.partial(fashion_mnist.load, data_dir=data_dir, classes=config.classes)
    return (
        config,
        load("train", limit=config.train_limit),
        load("test", limit=config.test_limit),
        None,
    )


def _compiled_model(config: TrainConfig, classes: int) -> keras.Model:
    """The configured model, seeded and deterministic, compiled for sparse labels."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    model = build_model(config.model, classes)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _callbacks(config: TrainConfig, fitted: int, verbose: int, validated: bool) -> tuple[Any, Any]:
    """The learning-rate plan and time budget, and early stopping when there is validation."""
    import keras

    from training.plan import Plan

    plan = Plan(config, steps_per_epoch=-(-fitted // config.batch_size), verbose=verbose)
    if not validated:
        return plan, None
    # Under one-cycle, validation accuracy swings while the rate is high: watch it only in
    # the second half, where the rate comes down (a 24-epoch run stopped at 13 otherwise).
    early = keras.callbacks.EarlyStopping(
        "val_accuracy",
        patience=config.patience or config.epochs,
        restore_best_weights=True,
        start_from_epoch=config.epochs // 2 if config.schedule == "one_cycle" else 0,
    )
    return plan, early


def _evaluate(
    model: keras.Model, test_set: fashion_mnist.Dataset
) -> tuple[np.ndarray, float, float]:
    """Probabilities on the test split, its loss (with Keras's clipping) and accuracy."""
    probabilities = model.predict(preprocess(test_set.images), batch_size=1024, verbose=0)
    picked = probabilities[np.arange(len(probabilities)), test_set.labels]
    loss = float(-np.log(np.clip(picked, 1e-7, 1.0)).mean())
    accuracy = float((probabilities.argmax(axis=1) == test_set.labels).mean())
    return probabilities, loss, accuracy


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
