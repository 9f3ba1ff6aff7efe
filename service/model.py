"""One loaded model version: the Keras model, its numpy runtime when it has one, and
compiled, warmed `tf.function`s."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.batching import Batcher
from service.errors import InvalidInput, ModelLoadError, NotFound
from service.responses import PredictEncoder
from service.runtime import NumpyRuntime, Unsupported
from training.train import ARTIFACT_FORMAT, METADATA_FILE, MODEL_FILE, sha256_file

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
        self, path: Path, metadata: dict[str, Any], keras_model: Any, runtime: str = "auto"
    ) -> None:
        import tensorflow as tf

        self.path = path
        self.metadata = metadata
        self.name: str = metadata["name"]
        self.version: int = int(metadata["version"])
        self.class_names: tuple[str, ...] = tuple(metadata["classes"])
        self.input_shape: tuple[int, int, int] = tuple(metadata["input"]["shape"])
        self.input_name: str = metadata["input"]["name"]
        self.output_name: str = metadata.get("output", {}).get("name", "probabilities")
        self.layers: dict[str, dict[str, Any]] = {
            layer["name"]: layer for layer in metadata["layers"]
        }
        # Layers whose output is an image-like [H, W, C] tensor: what FeatureMap can show.
        self.feature_layers = tuple(
            name for name, layer in self.layers.items() if len(layer["output_shape"]) == 3
        )
        convs = [name for name in self.feature_layers if self.layers[name]["type"] == "Conv2D"]
        self.default_layer = convs[0] if convs else (self.feature_layers or ("",))[0]
        self._keras = keras_model
        self._scale = float(metadata["preprocessing"]["scale"])
        self._offset = float(metadata["preprocessing"]["offset"])
        self._signature = [tf.TensorSpec([None, *self.input_shape], tf.float32, name="images")]
        self._predict_tf = tf.function(self._forward, input_signature=self._signature)
        self.runtime = "tensorflow"
        self._predict_numpy: Callable[[np.ndarray], np.ndarray] | None = None
        if runtime != "tensorflow":
            try:
                self._predict_numpy = NumpyRuntime.compile(
                    keras_model, self._scale, self._offset
                ).predict
                self.runtime = "numpy"
            except Unsupported as exc:
                if runtime == "numpy":
                    raise ModelLoadError(
                        f"{path}: the numpy runtime cannot run it: {exc}"
                    ) from None
                log.info("%s: numpy runtime unsupported (%s); using tensorflow", path, exc)
        # Set by the server: Predict calls go through it, coalesced with their neighbours.
        self.batcher: Batcher | None = None
        self.encoder = PredictEncoder(self.name, self.version, self.class_names)
        self._features: dict[str, _FeatureFunction] = {}
        self._features_lock = threading.Lock()

    @classmethod
    def load(cls, path: Path, runtime: str = "auto") -> Model:
        """Load `path` = MODELS_DIR/NAME/VERSION, verify it against its metadata.json, warm it."""
        started = time.perf_counter()
        metadata = _read_metadata(path)
        model_file = path / MODEL_FILE
        digest = sha256_file(model_file)
        if digest != metadata["model_file"]["sha256"]:
            raise ModelLoadError(
                f"{model_file}: sha256 {digest} differs from metadata.json's "
                f"{metadata['model_file']['sha256']} (a partial copy or a replaced file)"
            )
        import keras

        try:
            keras_model = keras.models.load_model(model_file, compile=False)
        except Exception as exc:
            raise ModelLoadError(f"{model_file}: Keras cannot load it: {exc}") from exc
        input_shape = list(keras_model.input.shape[1:])
        output_shape = list(keras_model.output.shape[1:])
        if input_shape != metadata["input"]["shape"] or output_shape != [len(metadata["classes"])]:
            raise ModelLoadError(
                f"{path}: the model maps {input_shape} → {output_shape} but metadata.json "
                f"says {metadata['input']['shape']} → {len(metadata['classes'])} classes"
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
        features = self._feature_function(layer)
        if pre_activation and not features.has_pre_activation:
            raise InvalidInput(
                f"layer {layer!r} is a {self.layers[layer]['type']}: only Conv2D layers have a "
                "pre-activation; ask without it or pick a conv layer"
            )
        activations, pre = features.function(pixels)
        return activations.numpy(), pre.numpy() if pre_activation else None

    def check_layer(self, layer: str) -> None:
        """Raise NotFound unless `layer` is a layer FeatureMap can show."""
        if layer not in self.feature_layers:
            what = "has no layer" if layer not in self.layers else "has no 4-D output at layer"
            raise NotFound(
                f"model {self.name!r} version {self.version} {what} {layer!r}; "
                f"layers with feature maps: {', '.join(self.feature_layers)}"
            )

    def _forward(self, pixels: Any) -> Any:
        return self._keras(pixels * self._scale + self._offset, training=False)

    def _feature_function(self, name: str) -> _FeatureFunction:
        self.check_layer(name)
        with self._features_lock:
            if name not in self._features:
                self._features[name] = self._compile_features(name)
            return self._features[name]

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


def _read_metadata(path: Path) -> dict[str, Any]:
    metadata_path = path / METADATA_FILE
    try:
        metadata: dict[str, Any] = json.loads(metadata_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{metadata_path}: cannot read it: {exc}") from exc
    if metadata.get("format_version") != ARTIFACT_FORMAT:
        raise ModelLoadError(
            f"{metadata_path}: format_version {metadata.get('format_version')!r}, "
            f"this server reads {ARTIFACT_FORMAT}"
        )
    missing = {
        "name",
        "version",
        "classes",
        "input",
        "preprocessing",
        "model_file",
        "layers",
    } - set(metadata)
    if missing:
        raise ModelLoadError(f"{metadata_path}: missing {', '.join(sorted(missing))}")
    if str(metadata["version"]) != path.name or metadata["name"] != path.parent.name:
        raise ModelLoadError(
            f"{metadata_path}: describes {metadata['name']} version {metadata['version']}, "
            f"but lives in {path.parent.name}/{path.name}"
        )
    return metadata
