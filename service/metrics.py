"""Every Prometheus metric the server exports is defined here, and nowhere else.

A server of one process serves them itself. With `--workers N`, each worker writes its own
to files (prometheus_client's multiprocess mode, PROMETHEUS_MULTIPROC_DIR) and the supervisor
serves them all on one port (`serve_workers`): counters and histograms summed over the
workers, the gauges summed over the live ones, and each worker's `process_*` figures with a
`worker` label.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.process_collector import ProcessCollector

__all__ = [
    "BATCH_SIZE",
    "DROPPED",
    "INFERENCE_DURATION",
    "INFLIGHT",
    "MODEL_LOADED",
    "MODEL_LOAD_FAILURES",
    "QUEUE_WAIT",
    "REQUESTS",
    "REQUEST_DURATION",
    "WORKERS",
    "forget_worker",
    "serve_workers",
]

# From sub-millisecond single images to multi-second large batches.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip

REQUESTS = Counter(
    "convserve_requests",
    "Requests answered, by model, version, method, status code (gRPC's names) and protocol "
    "(grpc or http).",
    ["model", "version", "method", "code", "protocol"],
)
REQUEST_DURATION = Histogram(
    "convserve_request_duration_seconds",
    "Time from a request's arrival to its answer, by model, method and protocol.",
    ["model", "method", "protocol"],
    buckets=LATENCY_BUCKETS,
)
INFLIGHT = Gauge(
    "convserve_inflight_requests",
    "Requests being answered right now, by method.",
    ["method"],
    multiprocess_mode="livesum",
)
QUEUE_WAIT = Histogram(
    "convserve_queue_wait_seconds",
    "Time a request waited in its model's batch queue before its batch started, by model.",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
INFERENCE_DURATION = Histogram(
    "convserve_inference_seconds",
    "Time one batch took to compute, by model.",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "convserve_batch_size",
    "Images per batch the batcher ran, by model and version.",
    ["model", "version"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
DROPPED = Counter(
    "convserve_dropped_requests",
    "Requests that left a batch queue uncomputed: their deadline passed or the caller "
    "cancelled, by model and reason.",
    ["model", "reason"],
)
MODEL_LOADED = Gauge(
    "convserve_model_loaded",
    "Workers serving each model version: every worker does when it equals convserve_workers.",
    ["model", "version"],
    multiprocess_mode="livesum",
)
WORKERS = Gauge(
    "convserve_workers",
    "Worker processes serving (1 for a server of one process).",
    multiprocess_mode="livesum",
)
MODEL_LOAD_FAILURES = Counter(
    "convserve_model_load_failures",
    "Model versions that could not be loaded (corrupt, partial or inconsistent artifacts).",
    ["model"],
)


def serve_workers(
    port: int, host: str, path: str, pids: Callable[[], dict[str, int]]
) -> WSGIServer:
    """/metrics on host:port (in a thread) for the workers writing to `path`; `pids()` gives
    each live worker's pid by its name, for its `process_*` figures. A worker that exits is
    then `forget_worker`'s."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
    registry.register(_WorkerProcesses(pids))
    server, _ = start_http_server(port, host, registry)
    return server


def forget_worker(pid: int, path: str) -> None:
    """Drop an exited worker's gauges (in-flight, models loaded, workers); its counters and
    histograms stay in the sums, as a counter must never go down."""
    mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def _pid(pid: int) -> int | str:
    return pid or "self"


class _WorkerProcesses:
    """process_cpu_seconds_total, process_resident_memory_bytes, ... of each worker and of
    the supervisor, with a `worker` label (its index, or "supervisor")."""

    def __init__(self, pids: Callable[[], dict[str, int]]) -> None:
        self._pids = pids

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for worker, pid in {"supervisor": 0, **self._pids()}.items():
            process = ProcessCollector(pid=functools.partial(_pid, pid), registry=None)
            for family in process.collect():
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                merged.samples += [
                    sample._replace(labels={**sample.labels, "worker": worker})
                    for sample in family.samples
                ]
        yield from families.values()
