"""The adaptive batcher: concurrent requests for one model version become one batch.

Requests queue as they arrive. On the next turn of the event loop, if a worker slot is
free, the batcher takes everything already queued (up to `max_batch_size` images) and runs
it as one call; an idle server therefore dispatches a lone request at once, while a busy
one naturally forms larger batches. A small request with nothing queued ahead of it skips
the queue altogether. `max_batch_delay_s` > 0 lets a partial batch wait that
long for company (more throughput, more latency); the default 0 never waits.

Batches of at most `inline_max_images` run right on the event loop: for a small model a
thread hand-off (and the GIL ping-pong that comes with it) costs more than the arithmetic.
Larger batches run in the executor's worker threads.

Overload degrades into fast refusals: past `max_queued` waiting requests a new one gets
RESOURCE_EXHAUSTED at once. A request whose deadline (`DEADLINE`, set by the gRPC boundary)
passes while it waits is answered DEADLINE_EXCEEDED and never computed; a cancelled one
leaves the queue at once.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from service.calls import DEADLINE
from service.errors import DeadlineExceeded, ResourceExhausted, Unavailable

__all__ = ["Batcher"]

Array = np.ndarray


class _Request:
    __slots__ = ("arrived", "deadline", "future", "pixels")

    def __init__(
        self, pixels: Array, future: asyncio.Future[Array], arrived: float, deadline: float | None
    ) -> None:
        self.pixels = pixels
        self.future = future
        self.arrived = arrived
        self.deadline = deadline


class Batcher:
    """`await batcher.submit(pixels)` → `run(all queued pixels)` rows for these pixels.

    `run` maps [N, ...] → [N, ...]; it runs in `executor`, or on the event loop for batches of
    at most `inline_max_images` images (0: never). At most
    `max_concurrent_batches` batches run at once. An exception from `run` reaches exactly
    the requests of that batch. `name` says whose queue it is in error messages.
    """

    def __init__(
        self,
        run: Callable[[Array], Array],
        executor: Executor,
        *,
        max_batch_size: int = 256,
        max_batch_delay_s: float = 0.0,
        max_concurrent_batches: int = 1,
        inline_max_images: int = 0,
        max_queued: int = 0,
        name: str = "the model",
        observe_batch: Callable[[int, float], None] | None = None,
        observe_wait: Callable[[float], None] | None = None,
        observe_drop: Callable[[str], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_concurrent_batches < 1 or max_batch_delay_s < 0:
            raise ValueError("max_batch_size and max_concurrent_batches >= 1, delay >= 0")
        self._run = run
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max_batch_delay_s
        self.max_concurrent_batches = max_concurrent_batches
        self.inline_max_images = inline_max_images
        self.max_queued = max_queued  # 0: no limit
        self.name = name
        # (images, seconds the batch ran) per batch; seconds waited in the queue per request;
        # why a request left the queue uncomputed ("deadline" or "cancelled").
        self._observe = observe_batch or (lambda images, seconds: None)
        self._observe_wait = observe_wait or (lambda seconds: None)
        self._observe_drop = observe_drop or (lambda reason: None)
        self._dispatch_scheduled = False
        self._queue: collections.deque[_Request] = collections.deque()
        self._queued_images = 0
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def queued_images(self) -> int:
        return self._queued_images

    @property
    def running(self) -> int:
        """Batches being computed in worker threads right now."""
        return self._running

    async def submit(self, pixels: Array) -> Array:
        images = len(pixels)
        if images <= self.inline_max_images and not (self._queue or self.max_batch_delay_s):
            # Nothing queued to join and no delay asked for: answer now, on the loop.
            self._observe_wait(0.0)
            started = time.perf_counter()
            result = self._run(pixels)
            self._observe(images, time.perf_counter() - started)
            return result
        if self.max_queued and len(self._queue) >= self.max_queued:
            raise ResourceExhausted(
                f"{self.name} has {len(self._queue)} requests waiting, the most it queues "
                f"(max_queued_requests); retry later"
            )
        loop = asyncio.get_running_loop()
        request = _Request(pixels, loop.create_future(), loop.time(), DEADLINE.get())
        self._queue.append(request)
        self._queued_images += images
        if not self._dispatch_scheduled:  # requests arriving in this loop turn share a batch
            self._dispatch_scheduled = True
            loop.call_soon(self._dispatch)
        try:
            return await request.future
        except asyncio.CancelledError:  # the caller went away (or gRPC saw its deadline pass)
            if request in self._queue:
                self._queue.remove(request)
                self._queued_images -= images
                expired = request.deadline is not None and loop.time() >= request.deadline
                self._observe_drop("deadline" if expired else "cancelled")
            raise

    def _dispatch(self) -> None:
        self._dispatch_scheduled = False
        loop = asyncio.get_running_loop()
        while self._queue and self._running < self.max_concurrent_batches:
            if self.max_batch_delay_s and self._queued_images < self.max_batch_size:
                due = self._queue[0].arrived + self.max_batch_delay_s
                if loop.time() < due:  # a partial batch: wait for company until `due`
                    if self._timer is None:
                        self._timer = loop.call_at(due, self._on_timer)
                    return
            batch = self._take()
            if batch:
                self._start(batch)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _take(self) -> list[_Request]:
        """Queued requests in order, up to max_batch_size images (a bigger single one alone)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch: list[_Request] = []
        images = 0
        now = asyncio.get_running_loop().time()
        while self._queue:
            request = self._queue[0]
            size = len(request.pixels)
            if batch and images + size > self.max_batch_size:
                break
            self._queue.popleft()
            self._queued_images -= size
            if request.future.done():  # cancelled, and its task has not run since
                self._observe_drop("cancelled")
                continue
            if request.deadline is not None and now >= request.deadline:
                self._observe_drop("deadline")
                request.future.set_exception(DeadlineExceeded(
                    f"the call's deadline passed after {(now - request.arrived) * 1e3:.1f} ms "
                    f"in {self.name}'s queue; it was not computed"
                ))  # fmt: skip
                continue
            batch.append(request)
            images += size
        return batch

    def _start(self, batch: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for request in batch:
            self._observe_wait(now - request.arrived)
        pixels = [request.pixels for request in batch]
        images = sum(len(p) for p in pixels)
        started = time.perf_counter()
        if images <= self.inline_max_images:
            try:
                self._resolve(batch, _run_batch(self._run, pixels))
            except Exception as exc:
                self._resolve(batch, exc)
            self._observe(images, time.perf_counter() - started)
            return
        self._running += 1
        done = loop.run_in_executor(self._executor, _run_batch, self._run, pixels)
        done.add_done_callback(lambda finished: self._finish(batch, finished, images, started))

    def _finish(
        self, batch: list[_Request], finished: asyncio.Future[Array], images: int, started: float
    ) -> None:
        self._observe(images, time.perf_counter() - started)
        self._running -= 1
        if finished.cancelled():  # the executor shut down under it
            error: BaseException | None = Unavailable("the server is shutting down; retry")
        else:
            error = finished.exception()
        self._resolve(batch, error or finished.result())
        self._dispatch()

    @staticmethod
    def _resolve(batch: list[_Request], outcome: Array | BaseException) -> None:
        """Each waiting request gets its rows of the batch's result, or the batch's error."""
        offset = 0
        for request in batch:
            size = len(request.pixels)
            if not request.future.done():
                if isinstance(outcome, BaseException):
                    request.future.set_exception(outcome)
                else:
                    request.future.set_result(outcome[offset : offset + size])
            offset += size


def _run_batch(run: Callable[[Array], Array], pixels: list[Array]) -> Array:
    """In the worker thread: one array for the whole batch, one call."""
    return run(pixels[0] if len(pixels) == 1 else np.concatenate(pixels))
