"""One loaded model version: its ONNX Runtime sessions (warmed) and its filters.

The graphs are the artifact's (see convserve.artifact): raw pixels in, preprocessing inside.
Every method is a plain blocking call; ONNX Runtime releases the GIL while it computes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime

from convserve import artifact
from convserve.artifact import (
    CLASS_INDEX,
    CLASSES,
    EXPLAIN_FILE,
    FEATURES_FILE,
    FILTERS_FILE,
    GRADIENT_METHODS,
    ONNX_FILE,
    PIXELS,
    PROBABILITIES,
    Layer,
    Metadata,
)
from service.errors import InvalidInput, ModelLoadError, NotFound

__all__ = ["Explanation", "Model"]

log = logging.getLogger(__name__)

# Batch sizes run once before the model reports ready.
WARMUP_BATCH_SIZES = (1, 8)


@dataclass(frozen=True)
class Explanation:
    """What an explanation is of, checked against the model (`Model.explanation`): the method,
    the conv layer it explains ("" for occlusion, which explains the image), and the class
    (None: each image's most probable)."""

    method: str
    layer: str
    class_index: int | None


class Model:
    """A model version ready to answer: every method takes raw pixels float32 [N, H, W, C]."""

    def __init__(
        self,
        path: Path,
        metadata: Metadata,
        sessions: dict[str, onnxruntime.InferenceSession],
        filters: dict[str, np.ndarray],
    ) -> None:
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
        # FeatureMap and Filters show the first conv layer, Explain the last with a gradient
        # graph (Grad-CAM's choice: the most semantic features that still have a place).
        self.default_layer = (self.conv_layers or self.feature_layers or ("",))[0]
        self._predict = sessions[ONNX_FILE]
        self._features = sessions[FEATURES_FILE]
        self._explain = sessions.get(EXPLAIN_FILE)
        self._filters = filters
        # Predict's time per image, timed at the end of `warm` (unknown until then).
        self.seconds_per_image = math.inf
        # The layers with gradient explanations: those the explanation graph has heatmaps of.
        explained = {output.name for output in self._explain.get_outputs()} if self._explain else ()
        self.explain_layers = tuple(
            name for name in self.conv_layers if artifact.heatmap(name, "gradcam") in explained
        )
        self.explain_layer = (self.explain_layers or self.conv_layers or ("",))[-1]
        # Behind global average pooling Grad-CAM is CAM; behind Flatten + Dense its mean
        # gradients are often all negative and it shows nothing, while HiResCAM is each
        # position's share of the score. Without a gradient graph: occlusion.
        pooled = any(layer.type == "GlobalAveragePooling2D" for layer in metadata.layers)
        self.default_method = (
            ("gradcam" if pooled else "hirescam") if self.explain_layers else "occlusion"
        )
        self.explain_methods = (
            (*GRADIENT_METHODS, "occlusion") if self.explain_layers else ("occlusion",)
        )
        # The gradient graph's fixed batch: requests are padded to a multiple of it.
        self._explain_batch = self._explain.get_inputs()[0].shape[0] if self._explain else 0
        if not isinstance(self._explain_batch, int):
            raise ModelLoadError(
                f"{path / EXPLAIN_FILE}: batch dimension {self._explain_batch!r}, expected a "
                "fixed size (see convserve.artifact)"
            )

    @classmethod
    def load(cls, path: Path, threads: int = 1, *, name: str = "") -> Model:
        """Load `path` = MODELS_DIR/NAME/VERSION, verified against its metadata.json, and warm
        it; `threads` is each ONNX Runtime session's intra-op thread count. `name`: the name
        it is served under, when not its own (see `artifact.read`'s `renamed`)."""
        started = time.perf_counter()
        try:
            metadata = artifact.read(path, renamed=bool(name))
        except artifact.ArtifactError as exc:
            raise ModelLoadError(str(exc)) from None
        if name:
            metadata = dataclasses.replace(metadata, name=name)
        for required in (ONNX_FILE, FEATURES_FILE, FILTERS_FILE):
            if metadata.file(required) is None:
                raise ModelLoadError(
                    f"{path}: no {required}: this version predates ONNX serving; write a new "
                    f"version that has it with `convserve export-onnx {metadata.name} "
                    f"--models-dir {path.parent.parent}`"
                )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Pool threads that spin while they wait take the CPU the event loop and the other
        # workers need: with --onnx-threads 2, 64-image Predicts ran at 0.09 of the no-op
        # server with spinning on (measured: see docs/performance.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = artifact.ONNX_LOG_ERRORS_ONLY
        sessions = {}
        for file in (ONNX_FILE, FEATURES_FILE, EXPLAIN_FILE):
            if metadata.file(file) is not None:
                sessions[file] = _session(path / file, options)
        _check_io(path / ONNX_FILE, sessions[ONNX_FILE], metadata)
        try:
            with np.load(path / FILTERS_FILE, allow_pickle=False) as stored:
                filters = {key: stored[key].astype(np.float32) for key in stored.files}
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{path / FILTERS_FILE}: cannot read it: {exc}") from exc
        model = cls(path, metadata, sessions, filters)
        model.warm()
        log.info("loaded %s version %d from %s in %.2f s", model.name, model.version, path,
                 time.perf_counter() - started)  # fmt: skip
        return model

    def warm(self) -> None:
        """Run every graph once per warm-up batch size: the first request pays nothing extra.
        Then time Predict on the largest (the best of 3): `seconds_per_image`."""
        for batch in WARMUP_BATCH_SIZES:
            pixels = np.zeros((batch, *self.input_shape), np.float32)
            self.predict(pixels)
            if self.default_layer:
                self.feature_map(pixels, self.default_layer)
        if self.explain_layers:  # one fixed batch size
            self.explain(pixels[:1], Explanation("gradcam", self.explain_layer, None))
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            self.predict(pixels)
            timings.append(time.perf_counter() - started)
        self.seconds_per_image = min(timings) / len(pixels)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Pixels float32 [N, H, W, C] (0..255) → class probabilities float32 [N, classes]."""
        result: np.ndarray = self._predict.run([PROBABILITIES], {PIXELS: pixels})[0]
        return result

    def feature_shape(self, layer: str, pre_activation: bool = False) -> tuple[int, ...]:
        """The shape [H, W, C] of `layer`'s feature maps (and of its pre-activation): NotFound
        for a layer without them, InvalidInput for the pre-activation of a layer that is not
        a convolution."""
        self.check_layer(layer)
        if pre_activation and not self.layers[layer].is_conv:
            raise InvalidInput(
                f"layer {layer!r} is a {self.layers[layer].type}: only Conv2D layers have a "
                "pre-activation; ask without it or pick a conv layer"
            )
        return self.layers[layer].output_shape

    def feature_map(
        self, pixels: np.ndarray, layer: str, pre_activation: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """A layer's activations [N, H, W, C] and, for Conv2D, the convolution before them
        (`layer` and `pre_activation` as `feature_shape` takes them)."""
        names = [layer, artifact.pre_activation(layer)] if pre_activation else [layer]
        activations, *pre = self._features.run(names, {PIXELS: pixels})
        return activations, pre[0] if pre else None

    def explanation(
        self, method: str = "", layer: str = "", class_index: int | None = None
    ) -> Explanation:
        """What `explain` is asked for, checked, with the defaults filled in: `method` (the
        model's `default_method`; the methods are described in convserve.proto), the conv
        layer a gradient method explains (the last with a gradient graph), and the class
        (each image's most probable)."""
        method = method or self.default_method
        layer = layer or ("" if method == "occlusion" else self.explain_layer)
        if class_index is not None and not 0 <= class_index < len(self.class_names):
            raise InvalidInput(
                f"class_index {class_index}: model {self.name!r} has {len(self.class_names)} "
                f"classes, 0..{len(self.class_names) - 1} ({', '.join(self.class_names)})"
            )
        if method == "occlusion":
            if layer:
                raise InvalidInput(
                    f"layer {layer!r}: occlusion explains the image, not a layer; leave it empty"
                )
        elif layer not in self.explain_layers:
            if layer:
                self.check_layer(layer)  # NOT_FOUND for a layer the model does not have
            has = f"layers {', '.join(self.explain_layers)}" if self.explain_layers else "no layer"
            raise InvalidInput(
                f"model {self.name!r} version {self.version} has {method} for {has} (their "
                f"gradients exported to ONNX), not for {layer!r}; ask for one of them or for "
                "method occlusion, which works on any model"
            )
        return Explanation(method, layer, class_index)

    def explain(
        self, pixels: np.ndarray, explanation: Explanation
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The heatmaps of `explanation` (from `explanation()`) float32 [N, H, W] at the
        input's resolution (>= 0, unnormalised), the class each explains int32 [N], and the
        probabilities float32 [N, classes]."""
        class_index = explanation.class_index
        if explanation.method == "occlusion":
            return self._occlusion(pixels, class_index)
        assert self._explain is not None  # explanation() allows a gradient method only with it
        batch, count = self._explain_batch, len(pixels)
        padded = np.zeros((-(-count // batch) * batch, *pixels.shape[1:]), np.float32)
        padded[:count] = pixels
        wanted = np.full(batch, -1 if class_index is None else class_index, np.int32)
        names = [artifact.heatmap(explanation.layer, explanation.method), CLASSES, PROBABILITIES]
        chunks = [
            self._explain.run(names, {PIXELS: padded[i : i + batch], CLASS_INDEX: wanted})
            for i in range(0, len(padded), batch)
        ]
        heatmaps, classes, probabilities = (
            np.concatenate(parts)[:count] for parts in zip(*chunks, strict=True)
        )
        return heatmaps, classes.astype(np.int32), probabilities

    def _occlusion(
        self, pixels: np.ndarray, class_index: int | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Occlusion sensitivity (Zeiler & Fergus 2014): cover a square patch (a quarter of the
        shorter side, half a patch apart) with zeros and record how much the class's
        probability drops; a pixel's heat is the mean drop of the patches over it."""
        height, width = self.input_shape[:2]
        patch = max(1, min(height, width) // 4)
        stride = max(1, patch // 2)
        boxes = [(top, left) for top in _starts(height, patch, stride)
                 for left in _starts(width, patch, stride)]  # fmt: skip
        cover = np.zeros((len(boxes), height, width), np.float32)
        for index, (top, left) in enumerate(boxes):
            cover[index, top : top + patch, left : left + patch] = 1
        covered = cover.sum(axis=0)
        probabilities = self.predict(pixels)
        classes = (
            probabilities.argmax(axis=1).astype(np.int32)
            if class_index is None
            else np.full(len(pixels), class_index, np.int32)
        )
        heatmaps = np.empty((len(pixels), height, width), np.float32)
        for image, (original, wanted) in enumerate(zip(pixels, classes, strict=True)):
            occluded = original * (1 - cover[..., None])  # [boxes, H, W, C]
            drops = probabilities[image, wanted] - self.predict(occluded)[:, wanted]
            heatmaps[image] = np.tensordot(drops, cover, axes=1) / covered
        return np.maximum(heatmaps, 0), classes, probabilities

    def filters(self, layer: str) -> tuple[np.ndarray, np.ndarray | None]:
        """A conv layer's kernels float32 [KH, KW, C_in, C_out] and biases [C_out] (or None)."""
        if layer not in self.conv_layers:
            raise NotFound(
                f"model {self.name!r} version {self.version} has no conv layer {layer!r}; "
                f"conv layers: {', '.join(self.conv_layers)}"
            )
        return self._filters[artifact.kernel(layer)], self._filters.get(artifact.bias(layer))

    def check_layer(self, layer: str) -> None:
        """Raise NotFound unless `layer` is a layer with feature maps (FeatureMap's)."""
        if layer not in self.feature_layers:
            what = "has no layer" if layer not in self.layers else "has no 4-D output at layer"
            raise NotFound(
                f"model {self.name!r} version {self.version} {what} {layer!r}; "
                f"layers with feature maps: {', '.join(self.feature_layers)}"
            )


def _starts(size: int, patch: int, stride: int) -> list[int]:
    """Patch offsets from 0 to the far edge, the last one flush with it."""
    return sorted({*range(0, size - patch + 1, stride), size - patch})


def _session(path: Path, options: onnxruntime.SessionOptions) -> onnxruntime.InferenceSession:
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime's errors are one pybind class per status
        raise ModelLoadError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc


def _check_io(path: Path, session: onnxruntime.InferenceSession, metadata: Metadata) -> None:
    """The graph maps pixels [N, *input.shape] → probabilities [N, classes], as recorded."""
    inputs = {i.name: list(i.shape[1:]) for i in session.get_inputs()}
    outputs = {o.name: list(o.shape[1:]) for o in session.get_outputs()}
    want_in, want_out = list(metadata.input.shape), [len(metadata.classes)]
    if inputs != {PIXELS: want_in} or outputs.get(PROBABILITIES) != want_out:
        raise ModelLoadError(
            f"{path}: the graph maps {inputs} → {outputs} but metadata.json says "
            f"{PIXELS} {want_in} → {PROBABILITIES} {want_out} ({len(metadata.classes)} classes)"
        )
