"""What every API does, convserve.v1 and the Open Inference Protocol: one implementation.

The path of a call: `model` (name + version → the loaded model), `pixels` (the request's
images, checked once, for that model), then `predict` (through the model's batcher),
`feature_map` or `explain`. Each returns numpy arrays; the servicers translate their
messages to these calls and the answers back to their own wire format.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

import numpy as np

from service import metrics
from service.batching import Batcher
from service.calls import ANSWERED_BY
from service.errors import TooLarge
from service.images import as_pixels, decode_files
from service.model import Explanation, Model
from service.repository import Repository
from service.settings import Settings

__all__ = ["Engine", "Images"]

T = TypeVar("T")

# A request's images: an array of pixels (decoded by the codec), or PNG/JPEG files.
Images = np.ndarray | Sequence[bytes]


class Engine:
    """Computation runs in `executor`'s threads; Predict batches and feature maps that the
    model's warm-up timing says take at most `inline_max_ms` run inline on the event loop
    (see `service.batching`)."""

    def __init__(self, repository: Repository, executor: Executor, settings: Settings) -> None:
        self.repository = repository
        self.settings = settings
        self._executor = executor
        # Made on a model's first Predict; gone with the model once no call holds it.
        self._batchers: weakref.WeakKeyDictionary[Model, Batcher] = weakref.WeakKeyDictionary()

    def model(self, name: str = "", version: int = 0) -> Model:
        """The model that answers this call (the default / latest when not named), which the
        boundary's metrics and access log then name."""
        model = self.repository.get(name, version)
        ANSWERED_BY.set((model.name, str(model.version)))
        return model

    async def pixels(self, model: Model, images: Images) -> np.ndarray:
        """A request's images → the float32 batch [N, H, W, C] `model` takes, count, shape and
        limits checked: an array as it is (uint8 or float32 of the shapes `as_pixels`
        accepts), files decoded and resized as the model was trained, in a worker thread."""
        max_images = self.settings.max_images
        if isinstance(images, np.ndarray):
            return as_pixels(images, model.input_shape, max_images)
        preprocessing = model.metadata.preprocessing
        return await self._run(decode_files, images, model.input_shape, max_images, preprocessing)

    async def predict(self, model: Model, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities float32 [N, classes], coalesced with concurrent requests."""
        batcher = self._batchers.get(model)
        if batcher is None:
            batcher = self._batchers[model] = self._batcher(model)
        return await batcher.submit(pixels)

    async def feature_map(
        self, model: Model, layer: str, pixels: np.ndarray, pre_activation: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """`layer`'s activations (and its convolution before them)."""
        shape = model.feature_shape(layer, pre_activation)
        floats = math.prod(shape) * (1 + pre_activation)
        self._check_fits(f"the {layer} feature maps {list(shape)}", pixels, floats)
        if len(pixels) <= self.inline_images(model):  # as Predict's small batches:
            return model.feature_map(pixels, layer, pre_activation)  # no hop
        return await self._run(model.feature_map, pixels, layer, pre_activation)

    async def explain(
        self, model: Model, pixels: np.ndarray, explanation: Explanation
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Heatmaps [N, H, W], the classes they explain [N], probabilities [N, classes]."""
        height, width = model.input_shape[:2]
        floats = height * width + len(model.class_names)
        self._check_fits(f"the heatmaps [{height}, {width}]", pixels, floats)
        return await self._run(model.explain, pixels, explanation)

    def _batcher(self, model: Model) -> Batcher:
        settings, name = self.settings, model.name  # nothing here may hold `model` (below)
        batch_size = metrics.BATCH_SIZE.labels(model.name, str(model.version))
        inference = metrics.INFERENCE_DURATION.labels(model.name)

        def observe_batch(images: int, seconds: float) -> None:
            batch_size.observe(images)
            inference.observe(seconds)

        # Not model.predict itself: the batcher is the value of a WeakKeyDictionary keyed by
        # the model, and would keep it (and its ONNX sessions) alive after it is unloaded. A
        # call holds its model while it runs.
        predict = weakref.WeakMethod(model.predict)

        def run(pixels: np.ndarray) -> np.ndarray:
            method = predict()
            assert method is not None, "a batch of a model no call holds"
            return method(pixels)

        return Batcher(
            run,
            self._executor,
            max_batch_size=settings.max_batch_size,
            max_batch_delay_s=settings.max_batch_delay_ms / 1000,
            max_concurrent_batches=settings.inference_threads,
            inline_max_images=self.inline_images(model),
            max_queued=settings.max_queued_requests,
            name=f"model {model.name!r} version {model.version}",
            observe_batch=observe_batch,
            observe_wait=metrics.QUEUE_WAIT.labels(model.name).observe,
            observe_drop=lambda reason: metrics.DROPPED.labels(name, reason).inc(),
        )

    def inline_images(self, model: Model) -> int:
        """The most images of `model` that run inline on the event loop: as many as its
        warm-up timing (`Model.seconds_per_image`) fits in `inline_max_ms`, at most a batch."""
        fit = self.settings.inline_max_ms / 1e3 / model.seconds_per_image
        return min(self.settings.max_batch_size, int(fit))

    def _check_fits(self, what: str, pixels: np.ndarray, floats_per_image: int) -> None:
        """Refuse up front an answer of float32s that could not fit in one message."""
        per_image = floats_per_image * 4
        limit = self.settings.max_message_bytes
        budget = limit - 64 * 1024  # room for the rest of the response
        if len(pixels) * per_image > budget:
            raise TooLarge(
                f"{what} of {len(pixels)} images are {len(pixels) * per_image} bytes, over the "
                f"{limit}-byte message limit (max_message_bytes); send at "
                f"most {max(budget // per_image, 0)} images"
            )

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
