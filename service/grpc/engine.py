"""What both APIs do, convserve.v1 and the Open Inference Protocol: one implementation.

Find the model (and label the call's metrics with it), check the pixels, run Predict
through the model's batcher and feature maps in a worker thread. The servicers only
translate their messages to and from these calls.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import numpy as np

from service.errors import ResourceExhausted
from service.grpc.boundary import Admission, answered_by
from service.images import as_pixels, decode_files
from service.model import Model
from service.repository import Repository

__all__ = ["Engine"]

T = TypeVar("T")


class Engine:
    """TensorFlow runs in `executor`'s threads; the event loop only decodes and encodes."""

    def __init__(
        self,
        repository: Repository,
        executor: Executor,
        max_images: int,
        max_message_bytes: int,
        max_concurrent_requests: int = 1 << 30,
    ) -> None:
        self.repository = repository
        self.admission = Admission(max_concurrent_requests)
        self._executor = executor
        self.max_images = max_images
        self._max_message_bytes = max_message_bytes

    def model(self, name: str = "", version: int = 0) -> Model:
        """The model that answers this call (the default / latest when not named)."""
        model = self.repository.get(name, version)
        answered_by.set((model.name, str(model.version)))
        return model

    def pixels(self, array: np.ndarray, model: Model) -> np.ndarray:
        """A request's uint8/float32 array → the checked float32 batch `model` takes."""
        return as_pixels(array, model.input_shape, self.max_images)

    async def decode(self, files: list[bytes], model: Model) -> np.ndarray:
        """PNG/JPEG files → the float32 batch `model` takes (decoded in a worker thread)."""
        return await self._run(decode_files, files, model.input_shape, self.max_images)

    async def predict(self, model: Model, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities float32 [N, classes], coalesced with concurrent requests."""
        assert model.batcher is not None, "the server gives every model a batcher"
        return await model.batcher.submit(pixels)

    async def feature_map(
        self, model: Model, layer: str, pixels: np.ndarray, pre_activation: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """`layer`'s activations (and its convolution before them)."""
        model.check_layer(layer)
        shape = model.layers[layer]["output_shape"]
        self._check_fits(
            f"the {layer} feature maps {shape}", pixels, math.prod(shape) * (1 + pre_activation)
        )
        return await self._run(
            lambda: model.feature_map(pixels, layer, pre_activation=pre_activation)
        )

    async def explain(
        self,
        model: Model,
        layer: str,
        pixels: np.ndarray,
        class_index: int | None = None,
        hires: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Heatmaps [N, H, W], the classes they explain [N], probabilities [N, classes]."""
        model.check_layer(layer)
        height, width = model.input_shape[:2]
        self._check_fits(
            f"the heatmaps [{height}, {width}]", pixels, height * width + len(model.class_names)
        )
        return await self._run(lambda: model.explain(pixels, layer, class_index, hires=hires))

    def _check_fits(self, what: str, pixels: np.ndarray, floats_per_image: int) -> None:
        """Refuse up front an answer of float32s that could not fit in one message."""
        per_image = floats_per_image * 4
        budget = self._max_message_bytes - 64 * 1024  # room for the rest of the response
        if len(pixels) * per_image > budget:
            raise ResourceExhausted(
                f"{what} of {len(pixels)} images are {len(pixels) * per_image} bytes, over the "
                f"{self._max_message_bytes}-byte message limit (max_message_bytes); send at "
                f"most {max(budget // per_image, 0)} images"
            )

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
