"""Overload over the wire: past a limit a call is refused at once, naming the limit; a call
whose deadline passes in the queue is never computed; the server keeps serving.

The model's computation is held on a gate while a first call runs, so "busy" lasts exactly
as long as the test needs, whatever the machine's speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from client import AsyncClient
from client.errors import ConvserveError, DeadlineExceeded, ResourceExhausted
from convserve.api.pb.inference import grpc_predict_v2_pb2 as v2
from convserve.api.pb.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from tests.conftest import metric, serving

ONE = np.zeros((1, 28, 28), np.uint8)


def _settings(models_dir: Path, **limits: Any) -> Any:
    from service.settings import Settings

    return Settings(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0,
                    models_dir=models_dir, default_model="fashion", inference_threads=1,
                    inline_max_ms=0, **limits)  # fmt: skip


def _gated() -> Any:
    """A `Model` whose Predict computations wait while its `gate` is closed; `computing` is
    set once one has started. The gate is open while the models load and warm."""
    from service.model import Model

    class Gated(Model):
        gate, computing = threading.Event(), threading.Event()

        def predict(self, pixels: np.ndarray) -> np.ndarray:
            self.computing.set()
            self.gate.wait(30)
            return super().predict(pixels)

    Gated.gate.set()
    return Gated


@contextlib.contextmanager
def _gated_server(models_dir: Path, **limits: Any) -> Iterator[tuple[Any, Any]]:
    """A server whose models are `_gated()`, and their class (its gate and event)."""
    gated = _gated()
    with serving(_settings(models_dir, **limits), load_model=gated.load) as server:
        try:
            yield server, gated
        finally:
            gated.gate.set()


async def _while_computing(
    server: Any,
    gated: Any,
    during: Callable[[AsyncClient, asyncio.Future[Any]], Awaitable[list[Any]]],
) -> tuple[Any, list[Any]]:
    """One Predict call computing (held on the gate) while `during(its client, the call)` runs;
    then the gate opens. The first call's result and what `during` returned."""
    gated.computing.clear()
    gated.gate.clear()
    try:
        async with AsyncClient(server.target, retries=0) as client:
            first = asyncio.ensure_future(client.predict(ONE, timeout=60))
            await asyncio.to_thread(gated.computing.wait, 30)
            outcomes = await during(client, first)
            gated.gate.set()
            return await first, outcomes
    finally:
        gated.gate.set()


def _while_busy(server: Any, gated: Any, *timeouts: float) -> tuple[Any, list[Any]]:
    """Predict calls with `timeouts` arriving while one computes: the first call's result and
    theirs. The gate opens once the refused ones have been answered."""

    async def later(client: AsyncClient, first: asyncio.Future[Any]) -> list[Any]:
        calls = [asyncio.ensure_future(client.predict(ONE, timeout=t)) for t in timeouts]
        await asyncio.wait(calls, timeout=1)  # refusals come at once; the rest wait
        gated.gate.set()
        return await asyncio.gather(*calls, return_exceptions=True)

    return asyncio.run(_while_computing(server, gated, later))


async def _outcomes(target: str, *calls: tuple[np.ndarray, float]) -> list[Any]:
    """Send every (images, timeout) call at once; each result or exception."""
    async with AsyncClient(target, retries=0) as client:
        return await asyncio.gather(
            *(client.predict(images, timeout=timeout) for images, timeout in calls),
            return_exceptions=True,
        )


def test_past_max_concurrent_requests_calls_are_refused_at_once(models_dir: Path) -> None:
    with _gated_server(models_dir, max_concurrent_requests=1) as (server, gated):
        first, outcomes = _while_busy(server, gated, 60, 60, 60)
        assert first.model == "fashion"
        assert all(isinstance(o, ResourceExhausted) for o in outcomes), outcomes
        assert "the most it takes at once (max_concurrent_requests)" in str(outcomes[0])
        assert not isinstance(asyncio.run(_outcomes(server.target, (ONE, 30)))[0], Exception)


def test_over_http_the_same_limit_sheds_with_429(models_dir: Path) -> None:
    """The HTTP door goes through the same boundary: the same limit, a 429 and a JSON error."""
    body = json.dumps({"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 784],
                                   "data": [0] * 784}]}).encode()  # fmt: skip

    def infer(port: int) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v2/models/fashion/infer", body,
            {"Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    async def during(client: AsyncClient, first: asyncio.Future[Any]) -> list[Any]:
        return [await asyncio.to_thread(infer, server.server.http_port)]

    with _gated_server(models_dir, max_concurrent_requests=1) as (server, gated):
        _, ((status, error),) = asyncio.run(_while_computing(server, gated, during))
        assert status == 429 and "(max_concurrent_requests)" in error["error"]
        assert infer(server.server.http_port)[0] == 200  # and then it answers


def test_past_max_queued_requests_calls_are_refused_at_once(models_dir: Path) -> None:
    with _gated_server(models_dir, max_queued_requests=1) as (server, gated):
        _, outcomes = _while_busy(server, gated, 60, 60, 60, 60)  # one waits, 3 refused
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


def test_a_call_whose_deadline_passes_in_the_queue_is_never_computed(models_dir: Path) -> None:
    with _gated_server(models_dir) as (server, gated):
        # Dropped as "deadline" when the server saw it pass, as "cancelled" when the client's
        # own deadline cancelled the call first.
        dropped = ("convserve_dropped_requests_total", {"model": "fashion"})
        batches = ("convserve_batch_size_count", {"model": "fashion"})
        before = [metric(server.scrape(), n, **labels) for n, labels in (dropped, batches)]
        first, (hurried,) = _while_busy(server, gated, 0.05)
        after = [metric(server.scrape(), n, **labels) for n, labels in (dropped, batches)]
    assert first.model == "fashion" and isinstance(hurried, DeadlineExceeded)
    assert after[0] - before[0] == 1  # dropped from the queue...
    assert after[1] - before[1] == 1  # ...and only the first call's batch ran


def _stream_request() -> v2.ModelInferRequest:
    tensor = v2.ModelInferRequest.InferInputTensor(
        name="images", datatype="UINT8", shape=[1, 28, 28]
    )
    return v2.ModelInferRequest(
        model_name="fashion", inputs=[tensor], raw_input_contents=[ONE.tobytes()]
    )


def test_a_stream_message_past_max_concurrent_requests_is_refused_and_the_stream_goes_on(
    models_dir: Path,
) -> None:
    with _gated_server(models_dir, max_concurrent_requests=1) as (server, gated):

        async def stream(client: AsyncClient, first: asyncio.Future[Any]) -> list[Any]:
            async with grpc.aio.insecure_channel(server.target) as channel:
                call = v2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(timeout=60)
                await call.write(_stream_request())
                refused = await call.read()  # while the first call holds the only place
                gated.gate.set()
                await first  # the place is free again
                await call.write(_stream_request())
                answered = await call.read()
                await call.done_writing()
                return [refused, answered]

        first, (refused, answered) = asyncio.run(_while_computing(server, gated, stream))
    assert first.model == "fashion"
    assert refused.error_message.startswith("RESOURCE_EXHAUSTED: ")
    assert "(max_concurrent_requests)" in refused.error_message
    assert not answered.error_message and answered.infer_response.model_name == "fashion"


def test_a_stream_message_whose_deadline_passes_in_the_queue_is_never_computed(
    models_dir: Path,
) -> None:
    with _gated_server(models_dir) as (server, gated):
        dropped = ("convserve_dropped_requests_total", {"model": "fashion"})
        batches = ("convserve_batch_size_count", {"model": "fashion"})
        before = [metric(server.scrape(), n, **labels) for n, labels in (dropped, batches)]

        async def stream(client: AsyncClient, first: asyncio.Future[Any]) -> list[Any]:
            async with grpc.aio.insecure_channel(server.target) as channel:
                call = v2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(timeout=0.2)
                await call.write(_stream_request())
                try:
                    await call.read()
                except grpc.aio.AioRpcError as error:
                    return [error.code()]
                return []

        first, codes = asyncio.run(_while_computing(server, gated, stream))
        after = [metric(server.scrape(), n, **labels) for n, labels in (dropped, batches)]
    assert first.model == "fashion" and codes == [grpc.StatusCode.DEADLINE_EXCEEDED]
    assert after[0] - before[0] == 1  # dropped from the queue...
    assert after[1] - before[1] == 1  # ...and only the first call's batch ran
