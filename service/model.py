"""One loaded model version: the Keras model, its numpy runtime when it has one, and
compiled, warmed `tf.function`s."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convserve import artifact
from convserve.artifact import Layer, Metadata
from service.errors import InvalidInput, ModelLoadError, NotFound
from service.runtime import NumpyRuntime, Unsupported

__all__ = ["Model"]

log = logging.getLogger(__name__)

# Batch sizes compiled and run once before the model reports ready.
WARMUP_BATCH_SIZES = (1, 8)


@dataclass(frozen=True)
class _FeatureFunction:
    """A compiled function returning (activations, pre-activations or None) for one layer."""

    function: Callable[[Any], tuple[Any, Any]]
    has_pre_activation: bool


class Model:
    """A model version ready to answer: `predict` and `feature_map` take raw pixels (0..255).

    Both are plain blocking calls. `feature_map` (and `predict` on the TensorFlow runtime)
    runs TensorFlow: callers run it in worker threads; the batcher decides where numpy runs.
    """

    def __init__(
        self, path: Path, metadata: Metadata, keras_model: Any, runtime: str = "auto"
    ) -> None:
        import tensorflow as tf

        self.path = path
        self.metadata = metadata
        self.name = metadata.name
        self.version = metadata.version
        self.class_names = metadata.classes
        self.input_shape: tuple[int, int, int] = metadata.input.shape  # type: ignore[assignment]
        self.input_name = metadata.input.name
        self.output_name = metadata.output.name
        self.layers: dict[str, Layer] = {layer.name: layer for layer in metadata.layers}
        # Layers whose output is an image-like [H, W, C] tensor: what FeatureMap can show.
        self.feature_layers = tuple(
            name for name, layer in self.layers.items() if len(layer.output_shape) == 3
        )
        self.conv_layers = tuple(name for name in self.feature_layers if self.layers[name].is_conv)
        # FeatureMap and Filters show the first conv layer, Explain the last (Grad-CAM's choice:
        # the most semantic features that still have a place in the image).
        self.default_layer = (self.conv_layers or self.feature_layers or ("",))[0]
        self.explain_layer = (self.conv_layers or self.feature_layers or ("",))[-1]
        self._keras = keras_model
        self._scale = metadata.preprocessing.scale
        self._offset = metadata.preprocessing.offset
        self._signature = [tf.TensorSpec([None, *self.input_shape], tf.float32, name="images")]
        self._predict_tf = tf.function(self._forward, input_signature=self._signature)
        self.runtime = "tensorflow"
        self._predict_numpy: Callable[[np.ndarray], np.ndarray] | None = None
        if runtime != "tensorflow":
            try:
                self._predict_numpy = NumpyRuntime.compile(
                    keras_model, self._scale, self._offset, metadata.layers
                ).predict
                self.runtime = "numpy"
            except Unsupported as exc:
                if runtime == "numpy":
                    raise ModelLoadError(
                        f"{path}: the numpy runtime cannot run it: {exc}"
                    ) from None
                log.info("%s: numpy runtime unsupported (%s); using tensorflow", path, exc)
        self._compiled: dict[tuple[str, str], Any] = {}  # ("features" | "explain", layer)
        self._compiled_lock = threading.Lock()

    @classmethod
    def load(cls, path: Path, runtime: str = "auto") -> Model:
        """Load `path` = MODELS_DIR/NAME/VERSION, verify it against its metadata.json, warm it."""
        started = time.perf_counter()
        try:
            metadata = artifact.read(path)
        except artifact.ArtifactError as exc:
            raise ModelLoadError(str(exc)) from None
        model_file = path / metadata.model_file.path
        import keras

        try:
            keras_model = keras.models.load_model(model_file, compile=False)
        except Exception as exc:
            raise ModelLoadError(f"{model_file}: Keras cannot load it: {exc}") from exc
        input_shape = list(keras_model.input.shape[1:])
        output_shape = list(keras_model.output.shape[1:])
        if input_shape != list(metadata.input.shape) or output_shape != [len(metadata.classes)]:
            raise ModelLoadError(
                f"{path}: the model maps {input_shape} → {output_shape} but metadata.json "
                f"says {list(metadata.input.shape)} → {len(metadata.classes)} classes"
            )
        model = cls(path, metadata, keras_model, runtime)
        model.warm()
        log.info("loaded %s version %d from %s in %.2f s (runtime %s)", model.name, model.version,
                 path, time.perf_counter() - started, model.runtime)  # fmt: skip
        return model

    def warm(self) -> None:
        """Trace and run the compiled functions once, so the first request pays nothing extra."""
        for batch in WARMUP_BATCH_SIZES:
            pixels = np.zeros((batch, *self.input_shape), np.float32)
            self.predict(pixels)
            if self.default_layer:
                self.feature_map(pixels, self.default_layer, pre_activation=True)
                self.explain(pixels, self.explain_layer)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Pixels float32 [N, H, W, C] (0..255) → class probabilities float32 [N, classes]."""
        if self._predict_numpy is not None:
            return self._predict_numpy(pixels)
        return self.predict_tensorflow(pixels)

    def predict_tensorflow(self, pixels: np.ndarray) -> np.ndarray:
        """The reference: the Keras model through its compiled `tf.function`."""
        return self._predict_tf(pixels).numpy()  # type: ignore[no-any-return]

    def feature_map(
        self, pixels: np.ndarray, layer: str, *, pre_activation: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """A layer's activations [N, H, W, C] and, for Conv2D, the convolution before them."""
        features: _FeatureFunction = self._function("features", layer)
        if pre_activation and not features.has_pre_activation:
            raise InvalidInput(
                f"layer {layer!r} is a {self.layers[layer].type}: only Conv2D layers have a "
                "pre-activation; ask without it or pick a conv layer"
            )
        activations, pre = features.function(pixels)
        return activations.numpy(), pre.numpy() if pre_activation else None

    def explain(
        self,
        pixels: np.ndarray,
        layer: str,
        class_index: int | None = None,
        *,
        hires: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Grad-CAM (or with `hires` HiResCAM) of `layer` for `class_index` (default: each
        image's most probable class); the methods are described in convserve.proto.

        Returns heatmaps float32 [N, H, W] at the input's resolution (>= 0, unnormalised), the
        class each explains int32 [N], and the probabilities float32 [N, classes].
        """
        if class_index is not None and not 0 <= class_index < len(self.class_names):
            raise InvalidInput(
                f"class_index {class_index}: model {self.name!r} has {len(self.class_names)} "
                f"classes, 0..{len(self.class_names) - 1} ({', '.join(self.class_names)})"
            )
        gradcam = self._function("explain", layer)
        heatmaps, classes, probabilities = gradcam(
            pixels, -1 if class_index is None else class_index, hires
        )
        return heatmaps.numpy(), classes.numpy(), probabilities.numpy()

    def filters(self, layer: str) -> tuple[np.ndarray, np.ndarray | None]:
        """A conv layer's kernels float32 [KH, KW, C_in, C_out] and biases [C_out] (or None)."""
        if layer not in self.conv_layers:
            raise NotFound(
                f"model {self.name!r} version {self.version} has no conv layer {layer!r}; "
                f"conv layers: {', '.join(self.conv_layers)}"
            )
        conv = self._keras.get_layer(layer)
        bias = np.asarray(conv.bias, np.float32) if conv.use_bias else None
        return np.asarray(conv.kernel, np.float32), bias

    def check_layer(self, layer: str) -> None:
        """Raise NotFound unless `layer` is a layer FeatureMap and Explain can show."""
        if layer not in self.feature_layers:
            what = "has no layer" if layer not in self.layers else "has no 4-D output at layer"
            raise NotFound(
                f"model {self.name!r} version {self.version} {what} {layer!r}; "
                f"layers with feature maps: {', '.join(self.feature_layers)}"
            )

    def _forward(self, pixels: Any) -> Any:
        return self._keras(pixels * self._scale + self._offset, training=False)

    def _function(self, kind: str, layer: str) -> Any:
        """The compiled `kind` function for `layer`, traced on first use."""
        self.check_layer(layer)
        with self._compiled_lock:
            if (kind, layer) not in self._compiled:
                build = self._compile_features if kind == "features" else self._compile_gradcam
                self._compiled[kind, layer] = build(layer)
            return self._compiled[kind, layer]

    def _compile_gradcam(self, name: str) -> Any:
        import keras
        import tensorflow as tf

        classifier = self._keras.layers[-1]  # Dense(classes, softmax): its logits are scored
        both = keras.Model(
            self._keras.input, [self._keras.get_layer(name).output, classifier.input]
        )
        height, width = self.input_shape[:2]

        def gradcam(pixels: Any, class_index: Any, hires: Any) -> tuple[Any, Any, Any]:
            with tf.GradientTape() as tape:
                maps, features = both(pixels * self._scale + self._offset, training=False)
                logits = tf.matmul(features, classifier.kernel)
                if classifier.use_bias:
                    logits += classifier.bias
                predicted = tf.argmax(logits, axis=1, output_type=tf.int32)
                classes = tf.where(
                    class_index < 0, predicted, tf.fill(tf.shape(predicted), class_index)
                )
                # Each image's score depends on its own maps only: one gradient for the batch.
                scores = tf.gather(logits, classes, batch_dims=1)
            gradients = tape.gradient(scores, maps)
            # Grad-CAM weighs each channel by its mean gradient, HiResCAM each position.
            mean = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
            weights = tf.where(hires, gradients, mean)
            cam = tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1, keepdims=True))
            heatmaps = tf.image.resize(cam, (height, width), method="bilinear")[..., 0]
            return heatmaps, classes, classifier.activation(logits)

        signature = [
            *self._signature,
            tf.TensorSpec([], tf.int32, name="class_index"),
            tf.TensorSpec([], tf.bool, name="hires"),
        ]
        return tf.function(gradcam, input_signature=signature)

    def _compile_features(self, name: str) -> _FeatureFunction:
        import keras
        import tensorflow as tf

        layer = self._keras.get_layer(name)
        inputs = self._keras.input
        if isinstance(layer, keras.layers.Conv2D):
            # The layer's own computation split in two: conv + bias, then the activation.
            below = keras.Model(inputs, layer.input) if layer.input is not inputs else None

            def conv(pixels: Any) -> tuple[Any, Any]:
                x = pixels * self._scale + self._offset
                if below is not None:
                    x = below(x, training=False)
                pre = layer.convolution_op(x, layer.kernel)
                if layer.use_bias:
                    pre = pre + layer.bias
                return layer.activation(pre), pre

            return _FeatureFunction(tf.function(conv, input_signature=self._signature), True)

        upto = keras.Model(inputs, layer.output)

        def other(pixels: Any) -> tuple[Any, Any]:
            out = upto(pixels * self._scale + self._offset, training=False)
            return out, out

        return _FeatureFunction(tf.function(other, input_signature=self._signature), False)
