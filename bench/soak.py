"""`make soak`: mixed load for `--minutes` (default 10), bad requests included, a hot reload
half-way; prints requests served, answers by kind and code, and the server's RSS over time.

    .venv/bin/python bench/soak.py --models-dir models [--minutes 10]

Kinds of call, from 8 concurrent callers (no client retries): Predict of 1 and of 64 images,
FeatureMap, V2 ModelInfer, and bad ones: an unknown model, a wrong shape, garbage bytes.
Half-way a version 2 is published (written aside, renamed into place) and version 1 removed.
Exits 1 if any good call failed or the server died.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
from common import rss_mb, start_convserve, stop
from hot_reload import publish

from client import AsyncClient
from client.errors import ConvserveError
from client.loadtest import v2_request
from convserve.fashion_mnist import load

CALLERS = 8
KINDS = ("predict 1", "predict 64", "featuremap", "v2 infer", "bad model", "bad shape", "garbage")


async def soak(
    target: str, seconds: float, reload: Callable[[], None]
) -> dict[str, collections.Counter[str]]:
    images = load("test", limit=256).images
    outcomes: dict[str, collections.Counter[str]] = {k: collections.Counter() for k in KINDS}
    deadline = time.monotonic() + seconds

    async with AsyncClient(target, retries=0) as client, grpc.aio.insecure_channel(target) as raw:
        infer = raw.unary_unary("/inference.GRPCInferenceService/ModelInfer", None, None)
        garbage = raw.unary_unary("/convserve.v1.ConvServe/Predict", None, None)

        async def call(kind: str, rng: random.Random) -> None:
            start = rng.randrange(192)
            if kind == "predict 1":
                await client.predict(images[start : start + 1])
            elif kind == "predict 64":
                await client.predict(images[start : start + 64])
            elif kind == "featuremap":
                await client.feature_map(images[start : start + 4])
            elif kind == "v2 infer":
                await infer(v2_request(images[start : start + 8]), timeout=30)
            elif kind == "bad model":
                await client.predict(images[:1], model="no-such-model")
            elif kind == "bad shape":
                await client.predict(np.zeros((1, 27, 28), np.uint8))
            else:
                await garbage(rng.randbytes(rng.randrange(1, 200)), timeout=30)

        async def caller(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < deadline:
                kind = rng.choices(KINDS, weights=(50, 10, 10, 10, 7, 7, 6))[0]
                try:
                    await call(kind, rng)
                    outcomes[kind]["OK"] += 1
                except ConvserveError as exc:
                    outcomes[kind][exc.code.name] += 1
                except grpc.RpcError as exc:
                    outcomes[kind][exc.code().name] += 1

        tasks = [asyncio.create_task(caller(seed)) for seed in range(CALLERS)]
        await asyncio.sleep(seconds / 2)
        await asyncio.get_running_loop().run_in_executor(None, reload)
        await asyncio.gather(*tasks)
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--model", default="fashion")
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()

    source = max((args.models_dir / args.model).iterdir(), key=lambda p: int(p.name))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / args.model
        shutil.copytree(source, root / "1")
        process, target, _, _ = start_convserve(Path(tmp), args.model, "--poll-seconds", "1")
        rss = {"start": rss_mb(process.pid)}

        def reload() -> None:
            rss["before reload"] = rss_mb(process.pid)
            publish(root / "1", root / "2", 2)
            time.sleep(5)
            shutil.rmtree(root / "1")

        started = time.perf_counter()
        try:
            outcomes = asyncio.run(soak(target, args.minutes * 60, reload))
            rss["end"] = rss_mb(process.pid)
            alive = process.poll() is None
        finally:
            stop(process)
        elapsed = time.perf_counter() - started

    total = sum(sum(counter.values()) for counter in outcomes.values())
    print(f"soak: {elapsed / 60:.1f} min, {total} requests ({total / elapsed:.0f}/s), "
          f"version 2 published half-way; server alive at the end: {alive}")  # fmt: skip
    for kind, counter in outcomes.items():
        print(f"  {kind:<11} {dict(counter.most_common())}")
    print("  RSS " + ", ".join(f"{when} {mb:.0f} MB" for when, mb in rss.items()))
    good_failed = sum(n for kind in KINDS[:4] for code, n in outcomes[kind].items() if code != "OK")
    print(f"  good calls that failed: {good_failed}")
    return 0 if alive and not good_failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
