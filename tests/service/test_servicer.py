"""Servicer and repository rules that need no network."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from service.errors import ResourceExhausted, Unavailable
from service.grpc.engine import Engine
from service.repository import Repository
from service.settings import Settings


async def test_feature_maps_too_big_for_one_message_are_refused_before_computing(
    tmp_path: Path,
) -> None:
    computed: list[int] = []
    model = SimpleNamespace(
        feature_shape=lambda layer, pre_activation: (26, 26, 10),
        feature_map=lambda pixels, layer, pre_activation: computed.append(len(pixels)),
        seconds_per_image=1e-5,
    )
    pixels = np.zeros((30, 28, 28, 1), np.float32)
    with ThreadPoolExecutor(1) as executor:
        settings = Settings(models_dir=tmp_path, max_message_bytes=1024 * 1024)
        engine = Engine(Repository(tmp_path), executor, settings)
        await engine.feature_map(model, "conv2d", pixels)  # type: ignore[arg-type]  # 811 KB
        with pytest.raises(
            ResourceExhausted, match=r"over the 1048576-byte message limit .* at most 18 images"
        ):
            await engine.feature_map(model, "conv2d", pixels, pre_activation=True)  # type: ignore[arg-type]
    assert computed == [30]


def test_requests_before_the_models_are_loaded_are_unavailable(tmp_path: Path) -> None:
    repository = Repository(tmp_path)
    with pytest.raises(Unavailable, match="still loading"):
        repository.get("fashion")
    repository.load_all()
    assert repository.loaded and repository.names == []


@pytest.mark.parametrize(
    ("seconds_per_image", "inline_max_ms", "inline"),
    [(1e-5, 2.0, 64), (1e-3, 2.0, 2), (0.05, 2.0, 0), (1e-5, 0.0, 0)],
)
def test_batches_run_on_the_event_loop_only_as_long_as_the_model_is_quick(
    tmp_path: Path, seconds_per_image: float, inline_max_ms: float, inline: int
) -> None:
    """A model that takes 10 µs an image answers a full batch inline; one that takes 50 ms
    never holds the event loop (nor does any with --inline-max-ms 0)."""
    model = SimpleNamespace(seconds_per_image=seconds_per_image)
    settings = Settings(models_dir=tmp_path, inline_max_ms=inline_max_ms, max_batch_size=64)
    with ThreadPoolExecutor(1) as executor:
        engine = Engine(Repository(tmp_path), executor, settings)
        assert engine.inline_images(model) == inline  # type: ignore[arg-type]
