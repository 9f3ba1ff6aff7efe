"""Overload over the wire: past a limit a call is refused at once, naming the limit; a call
whose deadline passes in the queue is never computed; the server keeps serving."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from client import AsyncClient
from client.errors import ConvserveError, DeadlineExceeded, ResourceExhausted
from tests.conftest import serving

# Big enough that one batch runs for tens of milliseconds in the single inference thread.
BIG = np.random.default_rng(0).integers(0, 256, (4000, 28, 28), np.uint8)
ONE = np.zeros((1, 28, 28), np.uint8)


def _settings(models_dir: Path, **limits: Any) -> Any:
    from service.settings import Settings

    return Settings(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0,
                    models_dir=models_dir, default_model="fashion", inference_threads=1,
                    inline_max_images=0, **limits)  # fmt: skip


async def _outcomes(target: str, *calls: tuple[np.ndarray, float]) -> list[Any]:
    """Send every (images, timeout) call at once; each result or exception."""
    async with AsyncClient(target, retries=0) as client:
        return await asyncio.gather(
            *(client.predict(images, timeout=timeout) for images, timeout in calls),
            return_exceptions=True,
        )


def _counter(url: str, name: str, **labels: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items())
    )


def test_past_max_concurrent_requests_calls_are_refused_at_once(models_dir: Path) -> None:
    with serving(_settings(models_dir, max_concurrent_requests=1)) as server:
        outcomes = asyncio.run(_outcomes(server.target, *[(BIG, 60)] * 4))
        refused = [o for o in outcomes if isinstance(o, ResourceExhausted)]
        assert refused, outcomes
        assert all(o in refused or not isinstance(o, Exception) for o in outcomes), outcomes
        assert "the most it takes at once (max_concurrent_requests)" in str(refused[0])
        assert not isinstance(asyncio.run(_outcomes(server.target, (ONE, 30)))[0], Exception)


def test_past_max_queued_requests_calls_are_refused_at_once(models_dir: Path) -> None:
    with serving(_settings(models_dir, max_queued_requests=1)) as server:
        outcomes = asyncio.run(_outcomes(server.target, *[(BIG, 60)] * 5))
        refused = [o for o in outcomes if isinstance(o, ResourceExhausted)]
        assert len(refused) >= 2, outcomes  # one runs, one waits, the rest are refused
        assert "model 'fashion' version 1 has 1 requests waiting" in str(refused[0])
        assert "(max_queued_requests)" in str(refused[0])
        assert all(o in refused or not isinstance(o, Exception) for o in outcomes), outcomes
        assert not isinstance(asyncio.run(_outcomes(server.target, (ONE, 30)))[0], Exception)


def test_past_max_pending_requests_grpc_refuses_calls_before_python_sees_them(
    models_dir: Path,
) -> None:
    """gRPC's own overload guard: calls it has received but the server has not taken up yet.
    It answers them CANCELLED (gRPC's choice, not ours), at once and without any Python."""
    with serving(_settings(models_dir, max_pending_requests=2)) as server:
        before = _counter(server.metrics_url, "convserve_requests_total")
        outcomes = asyncio.run(_outcomes(server.target, *[(ONE, 60)] * 300))
        answered = _counter(server.metrics_url, "convserve_requests_total") - before
    refused = [o for o in outcomes if isinstance(o, ConvserveError)]
    assert refused and {o.code for o in refused} == {grpc.StatusCode.CANCELLED}
    assert answered == 300 - len(refused)  # the refused ones never reached the server's code


def test_a_call_whose_deadline_passes_in_the_queue_is_never_computed(models_dir: Path) -> None:
    huge = np.resize(BIG, (20_000, 28, 28))  # a batch that runs for ~100 ms (numpy, here)
    with serving(_settings(models_dir, max_images=20_000)) as server:
        batcher = server.server.repository.get("fashion").batcher
        # Dropped as "deadline" when the server saw it pass, as "cancelled" when the client's
        # own deadline cancelled the call first.
        dropped = ("convserve_dropped_requests_total", {"model": "fashion"})
        batches = ("convserve_batch_size_count", {"model": "fashion"})
        before = [
            _counter(server.metrics_url, name, **labels) for name, labels in (dropped, batches)
        ]

        async def big_then_hurried() -> list[Any]:
            async with AsyncClient(server.target, retries=0) as client:
                big = asyncio.ensure_future(client.predict(huge, timeout=60))
                while not batcher.running:  # the big batch is running: the next one waits
                    await asyncio.sleep(0.001)
                hurried = client.predict(ONE, timeout=0.03)
                return await asyncio.gather(big, hurried, return_exceptions=True)

        big, hurried = asyncio.run(big_then_hurried())
        assert big.labels.shape == (20_000,) and isinstance(hurried, DeadlineExceeded)
        after = [
            _counter(server.metrics_url, name, **labels) for name, labels in (dropped, batches)
        ]
        assert after[0] - before[0] == 1  # dropped from the queue...
        assert after[1] - before[1] == 1  # ...and only the big batch ran
