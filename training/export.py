"""The served form of a Keras classifier: ONNX graphs checked against Keras, and its filters.

tf2onnx converts `tf.function`s over the Keras model (Keras 3's own `model.export(...,
format="onnx")` goes through it too). Every graph takes raw pixels with the preprocessing
inside, so the server feeds what callers send. Before anything is published, ONNX Runtime
runs each graph on real test images and every output must equal Keras's (see `check`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import platform
import shutil
from collections.abc import Callable
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from convserve import artifact, fashion_mnist
from convserve.artifact import (
    CLASS_INDEX,
    CLASSES,
    EXPLAIN_FILE,
    FEATURES_FILE,
    FILTERS_FILE,
    GRADIENT_METHODS,
    KERAS_FILE,
    ONNX_FILE,
    ONNX_LOG_ERRORS_ONLY,
    PIXELS,
    PROBABILITIES,
    FileEntry,
    Metadata,
    Preprocessing,
)
from training.errors import ExportError
from training.layers import activated_output, activation_name

__all__ = [
    "TOLERANCE",
    "beyond_tolerance",
    "check",
    "export_onnx",
    "random_pixels",
    "versions",
    "write_served_form",
]

log = logging.getLogger(__name__)

# The largest difference allowed between ONNX Runtime's and Keras's outputs, relative to the
# output's magnitude when that is above 1 (float32 sums of a few hundred terms).
TOLERANCE = 1e-5
OPSET = 17
# The explanation graph's fixed batch: with a dynamic batch, tf2onnx turns the gradient of
# global average pooling into a Reshape that ONNX Runtime refuses. The server pads to it.
EXPLAIN_BATCH = 8
CHECK_IMAGES = 256  # how many test images each graph is checked on

Function = Callable[..., dict[str, Any]]


def write_served_form(
    model: Any, directory: Path, preprocessing: Preprocessing, test_images: np.ndarray
) -> list[FileEntry]:
    """Write model.onnx, features.onnx, explain.onnx (when the gradients export) and
    filters.npz into `directory`, each checked on `test_images` (pixels 0..255,
    [N, H, W, C] or [N, H, W]); returns their entries for metadata.json."""
    prepared = _Prepared(model, preprocessing)
    pixels = np.asarray(test_images[:CHECK_IMAGES], np.float32).reshape(-1, *prepared.shape)
    written = []
    for file, function in ((ONNX_FILE, prepared.predict()), (FEATURES_FILE, prepared.features())):
        try:
            session = _convert(function, directory / file)
        except Exception as exc:  # tf2onnx and ONNX Runtime raise many kinds
            raise ExportError(f"{file}: the model does not convert to ONNX: {exc}") from exc
        check(file, function, session, {PIXELS: pixels})
        written.append(directory / file)
    explain = _explain_graph(prepared, directory / EXPLAIN_FILE, pixels)
    if explain is not None:
        written.append(explain)
    filters = {}
    for layer in prepared.convs:
        filters[artifact.kernel(layer.name)] = np.asarray(layer.kernel, np.float32)
        if layer.use_bias:
            filters[artifact.bias(layer.name)] = np.asarray(layer.bias, np.float32)
    np.savez(directory / FILTERS_FILE, **filters)  # type: ignore[arg-type]
    written.append(directory / FILTERS_FILE)
    return [FileEntry.of(path) for path in written]


def export_onnx(
    models_dir: Path, name: str, version: int = 0, *, data_dir: Path | None = None
) -> Path:
    """Publish the next version of `name` with version `version`'s model.keras (0: the latest)
    and its served form, checked on Fashion-MNIST's test images of the model's classes (on
    random pixels for models of other images): for versions written before convserve served
    ONNX. Returns the new version's directory."""
    import keras

    root = Path(models_dir) / name
    found = sorted(int(p.name) for p in root.glob("[0-9]*") if p.name.isdigit())
    if not found or (version and version not in found):
        raise ExportError(f"{root}: no version {version or ''} to export (found {found})")
    source = root / str(version or found[-1])
    metadata = artifact.read(source)
    if metadata.file(KERAS_FILE) is None:
        raise ExportError(f"{source}: no {KERAS_FILE} to export from")
    model = keras.models.load_model(source / KERAS_FILE, compile=False)
    folder = metadata.training.get("config", {}).get("images")
    if metadata.origin.get("kind", "trained") == "trained" and not folder:
        test = fashion_mnist.load("test", data_dir=data_dir, classes=metadata.classes)
        images = test.images[:CHECK_IMAGES]
    else:
        images = random_pixels(metadata.input.shape)

    def build(directory: Path, new_version: int) -> Metadata:
        if not (directory / KERAS_FILE).exists():  # not on a second try
            shutil.copy2(source / KERAS_FILE, directory / KERAS_FILE)
        files = write_served_form(model, directory, metadata.preprocessing, images)
        return dataclasses.replace(
            metadata,
            version=new_version,
            created_at=artifact.created_now(),
            files=(FileEntry.of(directory / KERAS_FILE), *files),
            framework={**metadata.framework, **versions()},
            training={**metadata.training, "exported_from_version": metadata.version},
        )

    return artifact.publish(models_dir, name, build)


def random_pixels(shape: tuple[int, ...], count: int = 64) -> np.ndarray:
    """Seeded uniform pixels 0..255 [count, *shape]: to check the graphs of a model whose
    data convserve does not have."""
    return np.random.default_rng(0).integers(0, 256, (count, *shape)).astype(np.float32)


def versions() -> dict[str, str]:
    """The versions that made an artifact (metadata.json's `framework`)."""
    found = {
        "python": platform.python_version(),
        "machine": f"{os.cpu_count()} CPUs ({platform.machine()}, {platform.system()})",
    }
    for package in ("tensorflow", "keras", "tf2onnx", "onnxruntime", "numpy", "convserve"):
        try:
            found[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            found[package] = "unknown"
    return found


def check(file: str, function: Function, session: Any, feeds: dict[str, np.ndarray]) -> None:
    """Raise ExportError unless every output of `session` equals `function`'s (Keras)."""
    expected = {name: np.asarray(value) for name, value in function(**feeds).items()}
    names = [output.name for output in session.get_outputs()]
    for name, actual in zip(names, session.run(names, feeds), strict=True):
        if (excess := beyond_tolerance(actual, expected[name])) is not None:
            difference, allowed = excess
            raise ExportError(
                f"{file}: output {name!r} differs from Keras by {difference:.3g} on "
                f"{len(feeds[PIXELS])} test images (allowed: {allowed:.3g})"
            )


def beyond_tolerance(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float] | None:
    """(difference, allowed) if `actual` differs from `expected` by more than TOLERANCE,
    relative to the expected output's magnitude when that is above 1 (or has another shape);
    None if it equals it."""
    same_shape = actual.shape == expected.shape
    difference = float(np.abs(actual - expected).max(initial=0)) if same_shape else np.inf
    allowed = TOLERANCE * max(1.0, float(np.abs(expected).max(initial=0)))
    return None if difference <= allowed else (difference, allowed)


class _Prepared:
    """`tf.function`s of the model on raw pixels, with the preprocessing inside."""

    def __init__(self, model: Any, preprocessing: Preprocessing) -> None:
        import keras
        import tensorflow as tf

        self.model = model
        self.scale, self.offset = preprocessing.scale, preprocessing.offset
        self.shape = tuple(int(d) for d in model.input.shape[1:])
        self.convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
        self.maps = [
            layer
            for layer in model.layers
            if type(layer).__name__ != "InputLayer" and len(layer.output.shape) == 4
        ]
        self.activated = {conv.name: activated_output(model, conv) for conv in self.convs}
        self.classifier = classifier(model)
        self._tf = tf

    def spec(self, batch: int | None = None) -> Any:
        return self._tf.TensorSpec([batch, *self.shape], self._tf.float32, name=PIXELS)

    def inputs(self, pixels: Any) -> Any:
        """pixels · scale + offset, with constants of rank 4: ONNX Runtime 1.32 broadcasts a
        scalar ~60x slower (measured: 650 µs against 10 µs for a Mul of 64 28x28 images)."""
        tf = self._tf
        x = pixels * tf.constant(self.scale, tf.float32, (1, 1, 1, 1))
        return x + tf.constant(self.offset, tf.float32, (1, 1, 1, 1)) if self.offset else x

    def predict(self) -> Any:
        """The model on raw pixels. A Flatten → Dense head reads the maps channels-first:
        ONNX Runtime convolves channels-first and Keras flattens channels-last, so the plain
        conversion transposes every image's maps before the Dense layer (a fifth of the seed
        model's time at 64 images, measured); with the Dense kernel's rows permuted instead,
        tf2onnx cancels the transposes (the check still holds the answers to Keras's)."""
        tf = self._tf
        head = self._flatten_dense()
        if head is None:

            def plain(pixels: Any) -> dict[str, Any]:
                return {PROBABILITIES: self.model(self.inputs(pixels), training=False)}

            return tf.function(plain, input_signature=[self.spec()])
        import keras

        flatten, dense, after = head
        below = keras.Model(self.model.input, flatten.input)
        height, width, channels = (int(d) for d in flatten.input.shape[1:])
        rows = np.asarray(dense.kernel).reshape(height, width, channels, -1)  # channels-last
        kernel = rows.transpose(2, 0, 1, 3).reshape(height * width * channels, -1)

        def predict(pixels: Any) -> dict[str, Any]:
            maps = below(self.inputs(pixels), training=False)
            flat = tf.reshape(tf.transpose(maps, [0, 3, 1, 2]), [-1, len(kernel)])
            out = tf.matmul(flat, kernel)
            out = dense.activation(out + dense.bias if dense.use_bias else out)
            for layer in after:
                out = layer(out, training=False)
            return {PROBABILITIES: out}

        return tf.function(predict, input_signature=[self.spec()])

    def _flatten_dense(self) -> tuple[Any, Any, list[Any]] | None:
        """(Flatten, the Dense after it, the layers after that) if the model is a plain chain
        of layers with one Flatten of conv maps followed [by Dropout] by a Dense, else None."""
        import keras

        stack = [
            layer for layer in self.model.layers if not isinstance(layer, keras.layers.InputLayer)
        ]
        if not all(b.input is a.output for a, b in itertools.pairwise(stack)):
            return None
        flattens = [i for i, layer in enumerate(stack) if isinstance(layer, keras.layers.Flatten)]
        if len(flattens) != 1 or len(stack[flattens[0]].input.shape) != 4:
            return None
        after = stack[flattens[0] + 1 :]
        while after and isinstance(after[0], keras.layers.Dropout):  # identity when serving
            after = after[1:]
        if not after or not isinstance(after[0], keras.layers.Dense):
            return None
        return stack[flattens[0]], after[0], after[1:]

    def features(self) -> Any:
        """Every image-like layer's output, and each conv's convolution + bias before its
        activation (the layer's own computation split in two)."""
        import keras

        taps = keras.Model(
            self.model.input,
            [layer.output for layer in self.maps] + [layer.input for layer in self.convs],
        )

        def features(pixels: Any) -> dict[str, Any]:
            outputs = taps(self.inputs(pixels), training=False)
            shown = outputs[: len(self.maps)]
            result = {layer.name: out for layer, out in zip(self.maps, shown, strict=True)}
            for conv in self.convs:  # a linear conv's activations are those of the layer after it
                result[conv.name] = result[self.activated[conv.name].name]
            for layer, below in zip(self.convs, outputs[len(self.maps) :], strict=True):
                pre = layer.convolution_op(below, layer.kernel)
                pre = pre + layer.bias if layer.use_bias else pre
                result[artifact.pre_activation(layer.name)] = pre
            return result

        return self._tf.function(features, input_signature=[self.spec()])

    def explain(self, layers: list[Any]) -> Any:
        """Grad-CAM and HiResCAM of `layers` (see convserve.proto's ExplainMethod), for each
        image's `class_index` (-1: its most probable class); the score is the class's logit."""
        import keras

        tf = self._tf
        classifier = self.classifier
        both = keras.Model(
            self.model.input,
            [self.activated[layer.name].output for layer in layers] + [classifier.input],
        )
        height, width = self.shape[:2]

        def explain(pixels: Any, class_index: Any) -> dict[str, Any]:
            with tf.GradientTape() as tape:
                *maps, features = both(self.inputs(pixels), training=False)
                logits = tf.matmul(features, classifier.kernel)
                if classifier.use_bias:
                    logits += classifier.bias
                predicted = tf.argmax(logits, axis=1, output_type=tf.int32)
                classes = tf.where(class_index < 0, predicted, class_index)
                # Each image's score depends on its own maps only: one gradient for the batch.
                scores = tf.gather(logits, classes, batch_dims=1)
            gradients = tape.gradient(scores, maps)
            result = {PROBABILITIES: tf.nn.softmax(logits), CLASSES: classes}
            for layer, activations, gradient in zip(layers, maps, gradients, strict=True):
                # GRADIENT_METHODS: Grad-CAM weighs each channel by its mean gradient,
                # HiResCAM each position.
                mean = tf.reduce_mean(gradient, axis=(1, 2), keepdims=True)
                for method, weights in zip(GRADIENT_METHODS, (mean, gradient), strict=True):
                    cam = tf.nn.relu(tf.reduce_sum(weights * activations, -1, keepdims=True))
                    resized = tf.image.resize(cam, (height, width), method="bilinear")
                    result[artifact.heatmap(layer.name, method)] = resized[..., 0]
            return result

        signature = [
            self.spec(EXPLAIN_BATCH),
            tf.TensorSpec([EXPLAIN_BATCH], tf.int32, name=CLASS_INDEX),
        ]
        return tf.function(explain, input_signature=signature)


def classifier(model: Any) -> Any:
    """The Dense layer whose logits the model's softmax turns into probabilities: the last
    layer (Dense with softmax), or the Dense right before a final Softmax; else None."""
    import keras

    last = model.layers[-1]
    if isinstance(last, keras.layers.Dense):
        return last if activation_name(last) == "softmax" else None
    below = getattr(last.input, "_keras_history", None)
    dense = below.operation if below else None
    if isinstance(dense, keras.layers.Dense) and activation_name(dense) == "linear":
        return dense if activation_name(last) == "softmax" else None
    return None


def _explain_graph(prepared: _Prepared, path: Path, pixels: np.ndarray) -> Path | None:
    """The gradient explanations of every conv layer, or of the last ones whose gradients
    convert (an activation whose gradient tf2onnx cannot convert stops the layers before it),
    if the model ends in a Dense softmax; else none: occlusion, which needs no gradient, still
    works."""
    if prepared.classifier is None:
        return None
    for first in range(len(prepared.convs)):
        function = prepared.explain(prepared.convs[first:])
        try:
            session = _convert(function, path)
        except Exception as exc:  # tf2onnx and ONNX Runtime raise many kinds
            log.info("no gradient graph from %s on: %s", prepared.convs[first].name, exc)
            continue
        batch = np.resize(pixels, (EXPLAIN_BATCH, *pixels.shape[1:]))
        classes = np.arange(EXPLAIN_BATCH, dtype=np.int32) % 2 - 1  # the predicted class, 0, …
        check(EXPLAIN_FILE, function, session, {PIXELS: batch, CLASS_INDEX: classes})
        return path
    log.warning("no gradient explanations (occlusion only): the gradients do not convert")
    path.unlink(missing_ok=True)
    return None


def _convert(function: Any, path: Path) -> Any:
    """Convert `function` to ONNX at `path`; the ONNX Runtime session that will check it."""
    import onnxruntime
    import tf2onnx

    from training import tf2onnx_ops

    tf2onnx_ops.register()
    converter = logging.getLogger("tf2onnx")
    level, converter.level = converter.level, logging.CRITICAL  # failures are the caller's
    try:
        graph, _ = tf2onnx.convert.from_function(
            function, input_signature=function.input_signature, opset=OPSET
        )
    finally:
        converter.setLevel(level)
    data = graph.SerializeToString()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = ONNX_LOG_ERRORS_ONLY
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    path.write_bytes(data)
    return session
