"""Hot reload: the time from a new version's directory appearing to it answering, under load.

    .venv/bin/python bench/hot_reload.py --models-dir models [--poll-seconds 2]

Serves a copy of the model's newest version as version 1, keeps Predict calls going from 8
concurrent callers (no retries), publishes version 2 (written aside, renamed into place),
waits for its first answer, removes version 1, and prints the delay, the requests answered
by each version and the failures.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import shutil
import tempfile
import time
from pathlib import Path

from common import start_convserve, stop

from client import AsyncClient
from client.errors import ConvserveError
from convserve.fashion_mnist import load


def publish(source: Path, target: Path, version: int) -> None:
    staging = target.with_name(f".staging-{version}")
    shutil.copytree(source, staging)
    metadata = json.loads((staging / "metadata.json").read_text())
    (staging / "metadata.json").write_text(json.dumps({**metadata, "version": version}))
    staging.rename(target)


async def measure(target: str, root: Path, source: Path, seconds_after: float) -> None:
    images = load("test", limit=1).images
    answered: collections.Counter[int] = collections.Counter()
    failures: collections.Counter[str] = collections.Counter()
    stop_calling = asyncio.Event()

    async def caller(client: AsyncClient) -> None:
        while not stop_calling.is_set():
            try:
                answered[(await client.predict(images)).version] += 1
            except ConvserveError as exc:
                failures[exc.code.name] += 1

    async with AsyncClient(target, retries=0) as client:
        callers = [asyncio.create_task(caller(client)) for _ in range(8)]
        await asyncio.sleep(1)
        published = time.perf_counter()
        publish(source, root / "2", 2)
        while not answered[2]:
            await asyncio.sleep(0.001)
        delay = time.perf_counter() - published
        shutil.rmtree(root / "1")
        await asyncio.sleep(seconds_after)
        stop_calling.set()
        await asyncio.gather(*callers)
    print(f"version 2 answered {delay:.2f} s after its directory appeared")
    print(f"requests answered: {sum(answered.values())} {dict(sorted(answered.items()))}; "
          f"failed: {sum(failures.values())} {dict(failures)}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--model", default="fashion")
    parser.add_argument("--poll-seconds", type=float, default=2.0)
    args = parser.parse_args()
    versions = sorted(p for p in (args.models_dir / args.model).iterdir() if p.name.isdigit())
    newest = max(versions, key=lambda p: int(p.name))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / args.model
        publish(newest, root / "1", 1)
        server, target, _, _ = start_convserve(
            Path(tmp), args.model, "--poll-seconds", str(args.poll_seconds)
        )
        try:
            asyncio.run(measure(target, root, newest, seconds_after=3 * args.poll_seconds))
        finally:
            stop(server)


if __name__ == "__main__":
    main()
