"""Every Prometheus metric the server exports is defined here, and nowhere else."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
]

# From sub-millisecond single images to multi-second large batches.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip

REQUESTS = Counter(
    "convserve_requests",
    "gRPC requests answered, by model, version, method and status code.",
    ["model", "version", "method", "code"],
)
REQUEST_DURATION = Histogram(
    "convserve_request_duration_seconds",
    "Time from a request's arrival to its answer, by model and method.",
    ["model", "method"],
    buckets=LATENCY_BUCKETS,
)
INFLIGHT = Gauge(
    "convserve_inflight_requests",
    "Requests being answered right now, by method.",
    ["method"],
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
    "1 for each model version that is loaded and serving.",
    ["model", "version"],
)
MODEL_LOAD_FAILURES = Counter(
    "convserve_model_load_failures",
    "Model versions that could not be loaded (corrupt, partial or inconsistent artifacts).",
    ["model"],
)
