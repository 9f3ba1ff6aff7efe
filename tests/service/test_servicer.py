"""Servicer and repository rules that need no network."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from service.errors import ResourceExhausted, Unavailable
from service.grpc.servicer import ConvServeServicer
from service.repository import Repository


def test_feature_maps_too_big_for_one_message_are_refused_before_computing(tmp_path: Path) -> None:
    with ThreadPoolExecutor(1) as executor:
        servicer = ConvServeServicer(Repository(tmp_path), executor, 4096, 1024 * 1024)
    model = SimpleNamespace(layers={"conv2d": {"output_shape": [26, 26, 10]}})
    servicer._check_feature_map_size(model, "conv2d", 30, pre=False)  # 811 KB: fits
    with pytest.raises(
        ResourceExhausted, match=r"over the 1048576-byte message limit .* at most 18 images"
    ):
        servicer._check_feature_map_size(model, "conv2d", 30, pre=True)


def test_requests_before_the_models_are_loaded_are_unavailable(tmp_path: Path) -> None:
    repository = Repository(tmp_path)
    with pytest.raises(Unavailable, match="still loading"):
        repository.get("fashion")
    repository.load_all()
    assert repository.loaded and repository.names == []
