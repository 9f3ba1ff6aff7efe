"""Whether `--workers N` acts as one server, as a new user would find out.

    .venv/bin/python bench/workers.py --models-dir models --model fashion [--workers 3]

Serves a copy of the model under a second name, `bar`, with N workers, and prints:
- after `convserve models unload bar`: of 100 Predicts of `bar`, each on a new connection,
  how many were answered (0 when the unload reached every worker);
- `convserve health` six times, each a new process and connection, for the server and `bar`;
- after `convserve models load bar`: of 100 such Predicts, how many were answered, and health;
- 300 Predicts on new connections, then one scrape of `--metrics-port`: how many it counted.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
from common import start_convserve, stop

from client import Client
from client.errors import ConvserveError


def copy_as(source: Path, target: Path, name: str) -> None:
    shutil.copytree(source, target)
    metadata = json.loads((target / "metadata.json").read_text())
    (target / "metadata.json").write_text(json.dumps({**metadata, "name": name}))


def predicts(target: str, model: str, count: int) -> collections.Counter[str]:
    """`count` Predicts, each on a new connection: outcomes by status."""
    outcomes: collections.Counter[str] = collections.Counter()
    for _ in range(count):
        with Client(target, retries=0, timeout=10) as client:
            try:
                client.predict(np.zeros((1, 28, 28), np.uint8), model=model)
                outcomes["OK"] += 1
            except ConvserveError as exc:
                outcomes[exc.code.name] += 1
    return outcomes


def cli(*args: str) -> str:
    command = [sys.executable, "-m", "convserve", *args]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    return (finished.stdout or finished.stderr).strip()


def health(target: str) -> None:
    for service in ("", "bar"):
        answers = [cli("health", "--target", target, "--service", service) for _ in range(6)]
        print(f"  convserve health --service '{service}' x6: {', '.join(answers)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--model", default="fashion")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    source = max((args.models_dir / args.model).iterdir(), key=lambda p: int(p.name))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        copy_as(source, root / args.model / "1", args.model)
        copy_as(source, root / "bar" / "1", "bar")
        server, target, metrics_port, _ = start_convserve(
            root, args.model, "--workers", str(args.workers), metrics=True
        )
        try:
            print(f"--workers {args.workers}")
            print(f"unload bar: {cli('models', 'unload', 'bar', '--target', target)}")
            print(f"  100 Predicts of bar on new connections: {dict(predicts(target, 'bar', 100))}")
            health(target)
            print(f"load bar: {cli('models', 'load', 'bar', '--target', target)}")
            print(f"  100 Predicts of bar on new connections: {dict(predicts(target, 'bar', 100))}")
            health(target)
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as page:
                before = page.read().decode()
            sent = predicts(target, args.model, 300)
            with urllib.request.urlopen(url, timeout=10) as page:
                after = page.read().decode()
            counted = _ok_predicts(after, args.model) - _ok_predicts(before, args.model)
            print(f"300 Predicts ({dict(sent)}); one scrape of --metrics-port counted {counted:g}")
        finally:
            stop(server)


def _ok_predicts(page: str, model: str) -> float:
    pattern = rf'^convserve_requests_total\{{(?=[^}}]*method="Predict")(?=[^}}]*model="{model}")'
    pattern += r'(?=[^}]*code="OK")[^}]*\} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, page, re.M))


if __name__ == "__main__":
    main()
