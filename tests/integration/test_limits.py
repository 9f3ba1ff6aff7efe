"""Overload over the wire: past a limit a call is refused at once, naming the limit; a call
whose deadline passes in the queue is never computed; the server keeps serving.

The model's computation is held on a gate while a first call runs, so "busy" lasts exactly
as long as the test needs, whatever the machine's speed.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from client import AsyncClient
from client.errors import ConvserveError, DeadlineExceeded, ResourceExhausted
from tests.conftest import metric, serving

ONE = np.zeros((1, 28, 28), np.uint8)


def _settings(models_dir: Path, **limits: Any) -> Any:
    from service.settings import Settings

    return Settings(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0,
                    models_dir=models_dir, default_model="fashion", inference_threads=1,
                    inline_max_images=0, **limits)  # fmt: skip


def _while_busy(
    server: Any, monkeypatch: pytest.MonkeyPatch, *timeouts: float
) -> tuple[Any, list[Any]]:
    """One call computing (held on a gate) while calls with `timeouts` arrive: the first
    call's result and theirs. The gate opens once the refused ones have been answered."""
    model = server.server.repository.get("fashion")
    gate, compute = threading.Event(), model.predict
    monkeypatch.setattr(model, "predict", lambda pixels: gate.wait(30) and compute(pixels))

    async def run() -> tuple[Any, list[Any]]:
        async with AsyncClient(server.target, retries=0) as client:
            first = asyncio.ensure_future(client.predict(ONE, timeout=60))
            while not model.batcher.running:
                await asyncio.sleep(0.001)
            later = [asyncio.ensure_future(client.predict(ONE, timeout=t)) for t in timeouts]
            await asyncio.wait(later, timeout=1)  # refusals come at once; the rest wait
            gate.set()
            return await first, await asyncio.gather(*later, return_exceptions=True)

    try:
        return asyncio.run(run())
    finally:
        gate.set()


async def _outcomes(target: str, *calls: tuple[np.ndarray, float]) -> list[Any]:
    """Send every (images, timeout) call at once; each result or exception."""
    async with AsyncClient(target, retries=0) as client:
        return await asyncio.gather(
            *(client.predict(images, timeout=timeout) for images, timeout in calls),
            return_exceptions=True,
        )


def test_past_max_concurrent_requests_calls_are_refused_at_once(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serving(_settings(models_dir, max_concurrent_requests=1)) as server:
        first, outcomes = _while_busy(server, monkeypatch, 60, 60, 60)
        assert first.model == "fashion"
        assert all(isinstance(o, ResourceExhausted) for o in outcomes), outcomes
        assert "the most it takes at once (max_concurrent_requests)" in str(outcomes[0])
        assert not isinstance(asyncio.run(_outcomes(server.target, (ONE, 30)))[0], Exception)


def test_past_max_queued_requests_calls_are_refused_at_once(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serving(_settings(models_dir, max_queued_requests=1)) as server:
        _, outcomes = _while_busy(server, monkeypatch, 60, 60, 60, 60)  # one waits, 3 refused
        refused = [o for o in outcomes if isinstance(o, ResourceExhausted)]
        assert len(refused) == 3 and not isinstance(outcomes[0], Exception), outcomes
        assert "model 'fashion' version 1 has 1 requests waiting" in str(refused[0])
        assert "(max_queued_requests)" in str(refused[0])


def test_past_max_pending_requests_grpc_refuses_calls_before_python_sees_them(
    models_dir: Path,
) -> None:
    """gRPC's own overload guard: calls it has received but the server has not taken up yet.
    It answers them CANCELLED (gRPC's choice, not ours), at once and without any Python."""
    with serving(_settings(models_dir, max_pending_requests=2)) as server:
        before = metric(server.scrape(), "convserve_requests_total")
        outcomes = asyncio.run(_outcomes(server.target, *[(ONE, 60)] * 300))
        answered = metric(server.scrape(), "convserve_requests_total") - before
    refused = [o for o in outcomes if isinstance(o, ConvserveError)]
    assert refused and {o.code for o in refused} == {grpc.StatusCode.CANCELLED}
    assert answered == 300 - len(refused)  # the refused ones never reached the server's code


def test_a_call_whose_deadline_passes_in_the_queue_is_never_computed(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serving(_settings(models_dir)) as server:
        # Dropped as "deadline" when the server saw it pass, as "cancelled" when the client's
        # own deadline cancelled the call first.
        dropped = ("convserve_dropped_requests_total", {"model": "fashion"})
        batches = ("convserve_batch_size_count", {"model": "fashion"})
        before = [metric(server.scrape(), n, **labels) for n, labels in (dropped, batches)]
        first, (hurried,) = _while_busy(server, monkeypatch, 0.05)
        after = [metric(server.scrape(), n, **labels) for n, labels in (dropped, batches)]
    assert first.model == "fashion" and isinstance(hurried, DeadlineExceeded)
    assert after[0] - before[0] == 1  # dropped from the queue...
    assert after[1] - before[1] == 1  # ...and only the first call's batch ran
