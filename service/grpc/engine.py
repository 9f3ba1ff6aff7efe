"""What both APIs do, convserve.v1 and the Open Inference Protocol: one implementation.

Find the model (and name it for the call's metrics), check the pixels, run Predict through
the model's batcher and feature maps and explanations in a worker thread. The engine
composes each served model with its batcher and its Predict encoder; the servicers only
translate their messages to and from these calls.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from service import metrics
from service.batching import Batcher
from service.calls import ANSWERED_BY
from service.errors import ResourceExhausted
from service.images import as_pixels, decode_files
from service.model import Model
from service.repository import Repository
from service.responses import PredictEncoder
from service.settings import Settings

__all__ = ["Engine"]

T = TypeVar("T")


@dataclass(frozen=True)
class _Served:
    """What a model is served with: Predict's batch queue and its response encoder."""

    batcher: Batcher
    encoder: PredictEncoder


class Engine:
    """Computation runs in `executor`'s threads; Predict batches and feature maps of at most
    `inline_max_images` images run inline on the event loop (see `service.batching`)."""

    def __init__(self, repository: Repository, executor: Executor, settings: Settings) -> None:
        self.repository = repository
        self.settings = settings
        self._executor = executor
        # Made on a model's first call; gone with the model once no call holds it.
        self._served: weakref.WeakKeyDictionary[Model, _Served] = weakref.WeakKeyDictionary()

    def model(self, name: str = "", version: int = 0) -> Model:
        """The model that answers this call (the default / latest when not named)."""
        model = self.repository.get(name, version)
        ANSWERED_BY.set((model.name, str(model.version)))
        return model

    def pixels(self, array: np.ndarray, model: Model) -> np.ndarray:
        """A request's uint8/float32 array → the checked float32 batch `model` takes."""
        return as_pixels(array, model.input_shape, self.settings.max_images)

    async def decode(self, files: list[bytes], model: Model) -> np.ndarray:
        """PNG/JPEG files → the float32 batch `model` takes (decoded and resized as the model
        was trained, in a worker thread)."""
        return await self._run(decode_files, files, model.input_shape, self.settings.max_images,
                               model.metadata.preprocessing)  # fmt: skip

    async def predict(self, model: Model, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities float32 [N, classes], coalesced with concurrent requests."""
        return await self._serve(model).batcher.submit(pixels)

    def encoder(self, model: Model) -> PredictEncoder:
        """Writes `model`'s convserve.v1 Predict answers."""
        return self._serve(model).encoder

    async def feature_map(
        self, model: Model, layer: str, pixels: np.ndarray, pre_activation: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """`layer`'s activations (and its convolution before them)."""
        model.check_layer(layer)
        shape = model.layers[layer].output_shape
        self._check_fits(
            f"the {layer} feature maps {list(shape)}",
            pixels,
            math.prod(shape) * (1 + pre_activation),
        )
        if len(pixels) <= self.settings.inline_max_images:  # as Predict's small batches:
            return model.feature_map(pixels, layer, pre_activation=pre_activation)  # no hop
        return await self._run(
            lambda: model.feature_map(pixels, layer, pre_activation=pre_activation)
        )

    async def explain(
        self,
        model: Model,
        layer: str,
        pixels: np.ndarray,
        class_index: int | None = None,
        method: str = "",
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Heatmaps [N, H, W], the classes they explain [N], probabilities [N, classes]."""
        height, width = model.input_shape[:2]
        self._check_fits(
            f"the heatmaps [{height}, {width}]", pixels, height * width + len(model.class_names)
        )
        return await self._run(lambda: model.explain(pixels, layer, class_index, method=method))

    def _serve(self, model: Model) -> _Served:
        served = self._served.get(model)
        if served is None:
            served = self._served[model] = _Served(
                self._batcher(model), PredictEncoder(model.name, model.version, model.class_names)
            )
        return served

    def _batcher(self, model: Model) -> Batcher:
        settings = self.settings
        batch_size = metrics.BATCH_SIZE.labels(model.name, str(model.version))
        inference = metrics.INFERENCE_DURATION.labels(model.name)

        def observe_batch(images: int, seconds: float) -> None:
            batch_size.observe(images)
            inference.observe(seconds)

        return Batcher(
            model.predict,
            self._executor,
            max_batch_size=settings.max_batch_size,
            max_batch_delay_s=settings.max_batch_delay_ms / 1000,
            max_concurrent_batches=settings.inference_threads,
            inline_max_images=settings.inline_max_images,
            max_queued=settings.max_queued_requests,
            name=f"model {model.name!r} version {model.version}",
            observe_batch=observe_batch,
            observe_wait=metrics.QUEUE_WAIT.labels(model.name).observe,
            observe_drop=lambda reason: metrics.DROPPED.labels(model.name, reason).inc(),
        )

    def _check_fits(self, what: str, pixels: np.ndarray, floats_per_image: int) -> None:
        """Refuse up front an answer of float32s that could not fit in one message."""
        per_image = floats_per_image * 4
        limit = self.settings.max_message_bytes
        budget = limit - 64 * 1024  # room for the rest of the response
        if len(pixels) * per_image > budget:
            raise ResourceExhausted(
                f"{what} of {len(pixels)} images are {len(pixels) * per_image} bytes, over the "
                f"{limit}-byte message limit (max_message_bytes); send at "
                f"most {max(budget // per_image, 0)} images"
            )

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
