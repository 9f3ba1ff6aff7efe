"""The batcher's promises, with a plain function standing in for the model."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.batching import Batcher
from service.calls import DEADLINE
from service.errors import DeadlineExceeded, ResourceExhausted


class Gated:
    """`run` that records each batch and blocks until the test opens the gate."""

    def __init__(self) -> None:
        self.batches: list[list[float]] = []
        self.gate = threading.Event()
        self.started = threading.Semaphore(0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.batches.append(x[:, 0].tolist())
        self.started.release()
        self.gate.wait(timeout=30)
        if (x == -1).any():
            raise ValueError("poisoned batch")
        return x * 2

    async def wait_started(self) -> None:
        await asyncio.to_thread(self.started.acquire, timeout=30)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


def rows(*values: float) -> np.ndarray:
    return np.array(values, np.float32)[:, None]


async def test_each_request_gets_its_own_rows_in_order(executor: ThreadPoolExecutor) -> None:
    batcher = Batcher(lambda x: x * 2, executor, max_batch_size=16)
    inputs = [rows(*range(i, i + i % 4 + 1)) for i in range(40)]
    results = await asyncio.gather(*(batcher.submit(x) for x in inputs))
    for x, result in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(result, x * 2)


async def test_idle_request_runs_at_once_and_queued_ones_coalesce(
    executor: ThreadPoolExecutor,
) -> None:
    run = Gated()
    batcher = Batcher(run, executor, max_batch_size=8)
    first = asyncio.ensure_future(batcher.submit(rows(0)))
    await run.wait_started()  # dispatched alone: nobody waited for a batch to fill
    rest = [asyncio.ensure_future(batcher.submit(rows(i))) for i in range(1, 6)]
    await asyncio.sleep(0)
    assert batcher.queued_images == 5
    run.gate.set()
    await asyncio.gather(first, *rest)
    assert run.batches == [[0], [1, 2, 3, 4, 5]]


async def test_small_batches_run_on_the_loop_and_large_ones_in_a_worker(
    executor: ThreadPoolExecutor,
) -> None:
    threads: list[str] = []

    def run(x: np.ndarray) -> np.ndarray:
        threads.append(threading.current_thread().name)
        return x * 2

    batcher = Batcher(run, executor, inline_max_images=2)
    results = [await batcher.submit(rows(1, 2)), await batcher.submit(rows(1, 2, 3))]
    np.testing.assert_array_equal(results[0], rows(2, 4))
    np.testing.assert_array_equal(results[1], rows(2, 4, 6))
    assert threads[0] == threading.current_thread().name
    assert threads[1] != threading.current_thread().name


async def test_batches_respect_max_batch_size(executor: ThreadPoolExecutor) -> None:
    run = Gated()
    batcher = Batcher(run, executor, max_batch_size=4)
    first = asyncio.ensure_future(batcher.submit(rows(0)))
    await run.wait_started()
    rest = [batcher.submit(rows(i)) for i in range(1, 11)]
    big = batcher.submit(rows(*range(100, 106)))  # larger than max: runs alone
    run.gate.set()
    await asyncio.gather(first, *rest, big)
    assert run.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10], list(range(100, 106))]


async def test_delay_collects_a_partial_batch(executor: ThreadPoolExecutor) -> None:
    run = Gated()
    run.gate.set()
    batcher = Batcher(run, executor, max_batch_size=8, max_batch_delay_s=0.2)
    await asyncio.gather(*(batcher.submit(rows(i)) for i in range(3)))
    assert run.batches == [[0, 1, 2]]  # without the delay: [[0], [1, 2]]


async def test_a_full_batch_does_not_wait_for_the_delay(executor: ThreadPoolExecutor) -> None:
    run = Gated()
    run.gate.set()
    batcher = Batcher(run, executor, max_batch_size=4, max_batch_delay_s=3600)
    results = asyncio.gather(*(batcher.submit(rows(i)) for i in range(4)))
    await asyncio.wait_for(results, timeout=30)
    assert run.batches == [[0, 1, 2, 3]]


async def test_a_cancelled_waiting_request_leaves_the_queue_uncomputed(
    executor: ThreadPoolExecutor,
) -> None:
    run, drops = Gated(), []
    batcher = Batcher(run, executor, max_batch_size=8, observe_drop=drops.append)
    first = asyncio.ensure_future(batcher.submit(rows(0)))
    await run.wait_started()
    a, b, c = (asyncio.ensure_future(batcher.submit(rows(i))) for i in (1, 2, 3))
    await asyncio.sleep(0)
    assert batcher.queued_images == 3
    b.cancel()
    await asyncio.sleep(0)
    assert (batcher.queued_images, drops) == (2, ["cancelled"])  # gone before any dispatch
    run.gate.set()
    results = await asyncio.gather(first, a, c)
    assert run.batches == [[0], [1, 3]]
    assert [r.tolist() for r in results] == [[[0]], [[2]], [[6]]]
    assert b.cancelled()


async def test_past_max_queued_a_request_is_refused_at_once(executor: ThreadPoolExecutor) -> None:
    run = Gated()
    batcher = Batcher(run, executor, max_queued=2, name="model 'm' version 1")
    first = asyncio.ensure_future(batcher.submit(rows(0)))
    await run.wait_started()
    queued = [asyncio.ensure_future(batcher.submit(rows(i))) for i in (1, 2)]
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhausted, match=r"model 'm' version 1 has 2 requests waiting.*"
                       r"\(max_queued_requests\)"):  # fmt: skip
        await batcher.submit(rows(3))
    run.gate.set()
    assert [r.tolist() for r in await asyncio.gather(first, *queued)] == [[[0]], [[2]], [[4]]]


async def test_a_request_whose_deadline_passes_in_the_queue_is_never_computed(
    executor: ThreadPoolExecutor,
) -> None:
    run, drops = Gated(), []
    batcher = Batcher(run, executor, observe_drop=drops.append)
    first = asyncio.ensure_future(batcher.submit(rows(0)))
    await run.wait_started()

    async def with_deadline(value: float, seconds: float) -> np.ndarray:
        DEADLINE.set(asyncio.get_running_loop().time() + seconds)
        return await batcher.submit(rows(value))

    late = asyncio.ensure_future(with_deadline(1, 0.05))
    patient = asyncio.ensure_future(with_deadline(2, 60))
    await asyncio.sleep(0.1)  # the first batch still runs: the 50 ms deadline passes
    run.gate.set()
    with pytest.raises(DeadlineExceeded, match=r"deadline passed after \d+\.\d ms.*not computed"):
        await late
    assert (await patient).tolist() == [[4]]
    await first
    assert run.batches == [[0], [2]]
    assert drops == ["deadline"]


async def test_an_exception_reaches_exactly_its_batch(executor: ThreadPoolExecutor) -> None:
    run = Gated()
    batcher = Batcher(run, executor, max_batch_size=2)
    first = asyncio.ensure_future(batcher.submit(rows(0)))
    await run.wait_started()
    poisoned = [asyncio.ensure_future(batcher.submit(rows(v))) for v in (1, -1)]
    healthy = [asyncio.ensure_future(batcher.submit(rows(v))) for v in (3, 4)]
    run.gate.set()
    outcomes = await asyncio.gather(first, *poisoned, *healthy, return_exceptions=True)
    assert run.batches == [[0], [1, -1], [3, 4]]
    assert [isinstance(o, ValueError) for o in outcomes] == [False, True, True, False, False]
    assert outcomes[3].tolist() == [[6]]


async def test_concurrent_batches_are_bounded(executor: ThreadPoolExecutor) -> None:
    running, peak = 0, 0
    lock = threading.Lock()

    def run(x: np.ndarray) -> np.ndarray:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        threading.Event().wait(0.01)
        with lock:
            running -= 1
        return x

    batcher = Batcher(run, executor, max_batch_size=1, max_concurrent_batches=2)
    await asyncio.gather(*(batcher.submit(rows(i)) for i in range(12)))
    assert peak == 2


async def test_batch_sizes_and_each_requests_wait_are_observed(
    executor: ThreadPoolExecutor,
) -> None:
    sizes: list[int] = []
    waits: list[float] = []
    run = Gated()
    batcher = Batcher(
        run,
        executor,
        max_batch_size=8,
        observe_batch=lambda images, seconds: sizes.append(images),
        observe_wait=waits.append,
    )
    first = asyncio.ensure_future(batcher.submit(rows(0, 1)))
    await run.wait_started()
    rest = [batcher.submit(rows(i)) for i in range(3)]
    run.gate.set()
    await asyncio.gather(first, *rest)
    assert sizes == [2, 3]
    assert len(waits) == 4 and min(waits) >= 0
