"""`convserve loadtest`: how much load a deployment takes, and at what latency.

Closed loop (`--concurrency 1,8,32,64`): that many calls always in flight, each step for
`--duration` seconds or `--requests` calls after `--warmup` seconds. Open loop
(`--rate 200,500`): calls start at that rate whatever the answers, with Poisson (exponential)
or uniform gaps, and each call's latency counts from its *intended* start, so a server that
stalls cannot hide behind a generator that waits for it (no coordinated omission).

Requests are serialized once up front and sent as raw bytes on generic gRPC calls, from
`--processes` processes with their own event loop and channels; the generator warns when it
is itself the bottleneck (its CPU saturated, or the rate it achieved below the rate asked).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import math
import multiprocessing
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from client.client import (
    channel_credentials,
    feature_map_request,
    open_channel,
    predict_request,
    read_pem,
)

__all__ = [
    "LoadPlan",
    "Step",
    "StepResult",
    "build_calls",
    "main",
    "plot",
    "run_steps",
    "table",
    "v2_request",
    "write_csv",
]

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}
V1 = "/convserve.v1.ConvServe/"
V2_INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAMS_PER_CHANNEL = 32


@dataclass(frozen=True)
class LoadPlan:
    """What to send, where, and how: shared by every step and every generator process."""

    target: str
    calls: tuple[tuple[str, bytes, int], ...]  # (method path, request bytes, images), cycled
    timeout: float = 30.0
    warmup: float = 1.0
    duration: float = 10.0
    requests: int | None = None  # per step, instead of `duration`
    distribution: str = "poisson"
    token: str | None = None
    tls: tuple[bool, bytes | None, bytes | None, bytes | None] = (False, None, None, None)


@dataclass(frozen=True)
class Step:
    """One point of the sweep: a closed-loop concurrency or an open-loop rate (req/s)."""

    concurrency: int | None = None
    rate: float | None = None

    def share(self, index: int, processes: int) -> Step:
        """This process's part of the step."""
        if self.concurrency is not None:
            return Step(concurrency=_part(self.concurrency, index, processes))
        assert self.rate is not None
        return Step(rate=self.rate / processes)

    @property
    def label(self) -> str:
        return f"c={self.concurrency}" if self.concurrency is not None else f"rate={self.rate:g}"


@dataclass
class StepResult:
    step: Step
    seconds: float
    latencies_ms: np.ndarray  # of the calls that succeeded
    errors: Counter[str]
    images: int  # in the calls that succeeded
    cpu_busy: float  # the generator processes' CPU time / (wall time × processes)
    warnings: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.latencies_ms) + sum(self.errors.values())

    def summary(self) -> dict[str, Any]:
        latencies = self.latencies_ms if len(self.latencies_ms) else np.array([math.nan])
        values = np.percentile(latencies, list(PERCENTILES.values()))
        latency = {name: round(float(v), 3) for name, v in zip(PERCENTILES, values, strict=True)}
        latency["max"] = round(float(latencies.max()), 3)
        latency["mean"] = round(float(latencies.mean()), 3)
        entry: dict[str, Any] = (
            {"concurrency": self.step.concurrency}
            if self.step.concurrency is not None
            else {"rate": self.step.rate}
        )
        entry.update(
            requests=self.requests,
            ok=len(self.latencies_ms),
            throughput_rps=round(self.requests / self.seconds, 1),
            images_per_s=round(self.images / self.seconds, 1),
            latency_ms=latency,
            errors=dict(self.errors),
            seconds=round(self.seconds, 6),
            generator_cpu=round(self.cpu_busy, 3),
        )
        return entry


# --- the generator, in each process ---


_progress: Any = None  # calls answered so far, one slot per process (shared memory)


def _share_progress(progress: Any) -> None:
    global _progress
    _progress = progress


def _run_share(plan: LoadPlan, step: Step, slot: int, budget: int | None) -> dict[str, Any]:
    """One process's part of a step (`budget` calls, or `plan.duration`): warm-up, then the
    measured run."""
    return asyncio.run(_run_async(plan, step, slot, budget))


class _Load:
    """One process's share of a step on its own event loop: its channels, its calls, what it
    has recorded."""

    def __init__(self, plan: LoadPlan, step: Step, slot: int) -> None:
        self.plan, self.step, self.slot = plan, step, slot
        tls, ca_cert, client_cert, client_key = plan.tls
        credentials = channel_credentials(tls, ca_cert, client_cert, client_key)
        self.metadata = (("authorization", f"Bearer {plan.token}"),) if plan.token else None
        width = step.concurrency or max(1, int((step.rate or 1) * 0.05))  # expected in flight
        self.channels = [
            open_channel(grpc.aio, plan.target, credentials)
            for _ in range(max(1, math.ceil(width / STREAMS_PER_CHANNEL)))
        ]
        self.methods = [
            [channel.unary_unary(path, None, None) for path, _, _ in plan.calls]
            for channel in self.channels
        ]
        self.loop = asyncio.get_running_loop()
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.images = 0
        self.sent_at = 0.0  # when an open loop sent its last call

    async def run(self, until: float, budget: int | None, record: bool) -> None:
        """Send calls until `until` (loop time) or `budget` calls, recording them or not."""
        if self.step.concurrency is not None:
            await self._closed(until, budget, record)
        else:
            await self._opened(until, budget, record)

    async def _call(self, index: int, started: float, record: bool) -> None:
        plan, which = self.plan, index % len(self.plan.calls)
        try:
            await self.methods[index % len(self.channels)][which](
                plan.calls[which][1], timeout=plan.timeout, metadata=self.metadata
            )
            outcome = "OK"
        except grpc.RpcError as error:
            outcome = error.code().name
        if record:
            if outcome == "OK":
                self.latencies.append(self.loop.time() - started)
                self.images += plan.calls[which][2]
            else:
                self.errors[outcome] += 1
            _progress[self.slot] += 1

    async def _closed(self, until: float, budget: int | None, record: bool) -> None:
        """A closed loop: `step.concurrency` callers, each sending its next call on an answer."""
        calls, loop = itertools.count(), self.loop

        async def caller() -> None:
            while loop.time() < until:
                index = next(calls)
                if budget is not None and index >= budget:
                    return
                await self._call(index, loop.time(), record)

        await asyncio.gather(*(caller() for _ in range(self.step.concurrency or 0)))

    async def _opened(self, until: float, budget: int | None, record: bool) -> None:
        """An open loop: calls sent at `step.rate` (Poisson or evenly spaced), answered or not;
        latency counts from when each call was due."""
        rate, loop = self.step.rate or 1.0, self.loop
        calls = itertools.count()
        tasks, intended, sent = [], loop.time(), 0
        while intended < until and (budget is None or sent < budget):
            gap = random.expovariate(rate) if self.plan.distribution == "poisson" else 1 / rate
            intended += gap
            delay = intended - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(self._call(next(calls), intended, record)))
            sent += 1
        self.sent_at = loop.time()
        await asyncio.gather(*tasks)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close(None)


async def _run_async(plan: LoadPlan, step: Step, slot: int, budget: int | None) -> dict[str, Any]:
    load = _Load(plan, step, slot)
    loop = load.loop
    if plan.warmup > 0:
        await load.run(loop.time() + plan.warmup, None, False)
    cpu, start = time.process_time(), loop.time()
    await load.run(math.inf if budget is not None else start + plan.duration, budget, True)
    end = loop.time()
    await load.close()
    return {
        "latencies": np.array(load.latencies) * 1000,
        "errors": load.errors,
        "images": load.images,
        "seconds": end - start,
        "send_seconds": (load.sent_at or end) - start,
        "cpu": time.process_time() - cpu,
    }


def run_steps(
    plan: LoadPlan, steps: list[Step], processes: int = 1, show: bool = True
) -> list[StepResult]:
    """Run each step from `processes` generator processes; print a progress line meanwhile."""
    context = multiprocessing.get_context("spawn")
    progress = context.Array("q", processes, lock=False)
    results = []
    with context.Pool(processes, initializer=_share_progress, initargs=(progress,)) as pool:
        for step in steps:
            for slot in range(processes):
                progress[slot] = 0
            started = time.monotonic()
            shares = [step.share(i, processes) for i in range(processes)]
            busy = [i for i, share in enumerate(shares) if share.concurrency != 0]
            budgets = [  # --requests split over the processes that have callers
                _part(plan.requests, busy.index(i), len(busy)) if i in busy else 0
                for i in range(processes)
            ]
            pending = pool.starmap_async(
                _run_share, [(plan, shares[i], i, budgets[i]) for i in range(processes)]
            )
            while not pending.ready():
                pending.wait(0.5)
                if show:
                    done = sum(progress)
                    rate = done / max(time.monotonic() - started - plan.warmup, 1e-9)
                    print(f"\r{step.label}: {done} calls, {max(rate, 0):.0f}/s ", end="",
                          file=sys.stderr, flush=True)  # fmt: skip
            if show:
                print("\r" + " " * 60 + "\r", end="", file=sys.stderr, flush=True)
            results.append(_merge(step, pending.get(), processes))
    return results


def _part(total: int | None, index: int, parts: int) -> int | None:
    return None if total is None else total // parts + (index < total % parts)


def _merge(step: Step, shares: list[dict[str, Any]], processes: int) -> StepResult:
    seconds = max(share["seconds"] for share in shares)
    errors: Counter[str] = Counter()
    for share in shares:
        errors.update(share["errors"])
    result = StepResult(
        step=step,
        seconds=seconds,
        latencies_ms=np.concatenate([share["latencies"] for share in shares]),
        errors=errors,
        images=sum(share["images"] for share in shares),
        cpu_busy=sum(share["cpu"] for share in shares) / (seconds * processes),
    )
    if result.cpu_busy > 0.9:
        result.warnings.append(
            f"{step.label}: the generator's own CPU was {result.cpu_busy:.0%} busy; its numbers "
            "may show its limit, not the server's (add --processes, or run it elsewhere)"
        )
    if step.rate is not None:
        send_seconds = max(share["send_seconds"] for share in shares)
        achieved = result.requests / send_seconds
        if achieved < 0.95 * step.rate:
            result.warnings.append(
                f"{step.label}: the generator started only {achieved:.0f} calls/s of the "
                f"{step.rate:g} asked (add --processes)"
            )
    return result


# --- what to send ---


def build_calls(
    api: str, workload: str, images: np.ndarray | list[bytes], batch: int,
    model: str | None, version: int | None, layer: str | None, input_name: str = "images",
) -> tuple[tuple[str, bytes, int], ...]:  # fmt: skip
    """Up to 16 distinct requests of `batch` images each, serialized once."""
    count = len(images)
    slices = [
        [images[(start + i) % count] for i in range(batch)]
        for start in range(0, max(count, 1), max(1, count // 16))
    ][:16]
    kinds = ["predict", "featuremap"] if workload == "mix" else [workload]
    calls = []
    for kind, chosen in itertools.product(kinds, slices):
        batch_images: Any = np.stack(chosen) if isinstance(images, np.ndarray) else list(chosen)
        if api == "v2":
            if kind != "predict" or not isinstance(batch_images, np.ndarray):
                raise ValueError("--api v2 sends Predict-like ModelInfer calls of pixels only")
            calls.append((V2_INFER, v2_request(batch_images, model, version, input_name), batch))
        elif kind == "predict":
            body = predict_request(batch_images, model, version, 3).SerializeToString()
            calls.append((V1 + "Predict", body, batch))
        else:
            request = feature_map_request(batch_images, layer, False, model, version)
            calls.append((V1 + "FeatureMap", request.SerializeToString(), batch))
    return tuple(calls)


def v2_request(
    images: np.ndarray, model: str | None = None, version: int | None = None,
    input_name: str = "images",
) -> bytes:  # fmt: skip
    """A V2 ModelInferRequest of uint8 pixels [N, H, W] as raw bytes, serialized."""
    from convserve.api.pb.inference import grpc_predict_v2_pb2 as v2  # not at import: see client.py

    tensor = v2.ModelInferRequest.InferInputTensor(
        name=input_name, datatype="UINT8", shape=[len(images), *images.shape[1:], 1]
    )
    request = v2.ModelInferRequest(
        model_name=model or "", model_version=str(version or ""), inputs=[tensor],
        raw_input_contents=[np.ascontiguousarray(images, np.uint8).tobytes()],
    )  # fmt: skip
    return request.SerializeToString()


# --- output ---


def table(results: list[StepResult]) -> str:
    header = (f"{'step':<12}{'requests':>9}{'req/s':>9}{'img/s':>10}"
              + "".join(f"{n:>9}" for n in [*PERCENTILES, "max"]) + "  errors")  # fmt: skip
    lines = [header, f"{'':<12}{'':>9}{'':>9}{'':>10}" + f"{'(ms)':>9}" * 6]
    for result in results:
        entry = result.summary()
        latency = entry["latency_ms"]
        errors = ", ".join(f"{code} {n}" for code, n in sorted(entry["errors"].items())) or "0"
        lines.append(
            f"{result.step.label:<12}{entry['requests']:>9}{entry['throughput_rps']:>9.0f}"
            f"{entry['images_per_s']:>10.0f}"
            + "".join(f"{latency[name]:>9.2f}" for name in [*PERCENTILES, "max"])
            + f"  {errors}"
        )
    return "\n".join(lines)


def write_csv(path: Path, results: list[StepResult]) -> None:
    names = [*PERCENTILES, "max", "mean"]
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["concurrency", "rate", "requests", "ok", "throughput_rps",
                         "images_per_s", *(f"{n}_ms" for n in names), "errors"])  # fmt: skip
        for result in results:
            entry = result.summary()
            writer.writerow([
                result.step.concurrency or "", result.step.rate or "", entry["requests"],
                entry["ok"], entry["throughput_rps"], entry["images_per_s"],
                *(entry["latency_ms"][n] for n in names),
                ";".join(f"{code}={n}" for code, n in sorted(entry["errors"].items())),
            ])  # fmt: skip


def plot(path: Path, results: list[StepResult], title: str) -> Any:
    """Latency percentiles against throughput, one line per percentile; returns the figure."""
    from convserve.pictures import pyplot

    plt = pyplot()
    import matplotlib.ticker

    summaries = [result.summary() for result in results]
    throughput = [entry["throughput_rps"] for entry in summaries]
    figure, axes = plt.subplots(figsize=(8, 5), dpi=100)
    for name in PERCENTILES:
        label = "p99.9" if name == "p999" else name
        axes.plot(throughput, [e["latency_ms"][name] for e in summaries], marker="o", label=label)
    for x, entry, result in zip(throughput, summaries, results, strict=True):
        axes.annotate(result.step.label, (x, entry["latency_ms"]["p50"]), fontsize=8,
                      textcoords="offset points", xytext=(4, -10))  # fmt: skip
    axes.set_xlabel("throughput (requests/s)")
    axes.set_ylabel("latency (ms)")
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(title="percentile")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return figure


# --- the command ---


def main(args: argparse.Namespace, images: np.ndarray | list[bytes]) -> int:
    """`convserve loadtest` with its parsed `args`, sending `images` (pixels or files)."""
    calls = build_calls(args.api, args.workload, images, args.batch, args.model, args.version,
                        args.layer)  # fmt: skip
    plan = LoadPlan(
        target=args.target, calls=calls, timeout=args.timeout, warmup=args.warmup,
        duration=args.duration, requests=args.requests, distribution=args.distribution,
        token=args.token,
        tls=(args.tls, read_pem(args.ca_cert), read_pem(args.client_cert),
             read_pem(args.client_key)),
    )  # fmt: skip
    if args.rate:
        steps = [Step(rate=rate) for rate in args.rate]
    else:
        steps = [Step(concurrency=c) for c in args.concurrency or [1, 8, 32, 64]]
    results = run_steps(plan, steps, args.processes, show=sys.stderr.isatty())
    print(f"{args.api} {args.workload}, {args.batch} image(s) per call, {args.target}, "
          f"{args.processes} generator process(es)")  # fmt: skip
    print(table(results))
    for result in results:
        for warning in result.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"steps": [r.summary() for r in results]}, indent=2))
    if args.csv:
        write_csv(args.csv, results)
    if args.plot:
        plot(args.plot, results, f"convserve loadtest: {args.api} {args.workload}, "
             f"batch {args.batch}, {args.target}")  # fmt: skip
    total = sum(result.requests for result in results)
    failed = sum(sum(result.errors.values()) for result in results)
    rate = failed / total if total else 1.0
    if rate > args.max_error_rate:
        print(f"error rate {rate:.2%} is over --max-error-rate {args.max_error_rate:.2%}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0
