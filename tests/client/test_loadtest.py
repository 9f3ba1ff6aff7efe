"""`convserve loadtest` against a real server: the counts add up, percentiles are ordered,
the outputs are what users read."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client.loadtest import PERCENTILES, Step, StepResult, plot

ORDER = [*PERCENTILES, "max"]


def _loadtest(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "convserve", "loadtest", "--target", target, "--warmup", "0"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=300, check=False
    )


def _check_step(step: dict[str, Any]) -> None:
    assert step["requests"] == step["ok"] + sum(step["errors"].values())
    latencies = [step["latency_ms"][name] for name in ORDER]
    assert latencies == sorted(latencies) and latencies[0] > 0
    assert step["throughput_rps"] == pytest.approx(step["requests"] / step["seconds"], rel=0.01)


def test_a_closed_loop_sweep_counts_every_call(server: Any, tmp_path: Path) -> None:
    out = {kind: tmp_path / f"steps.{kind}" for kind in ("json", "csv", "png")}
    outputs = [f"--{kind}={path}" for kind, path in out.items() if kind != "png"]
    done = _loadtest(server.target, "--concurrency", "1,4", "--requests", "60", "--processes", "2",
                     *outputs, f"--plot={out['png']}")  # fmt: skip
    assert done.returncode == 0, done.stderr
    steps = json.loads(out["json"].read_text())["steps"]
    assert [(s["concurrency"], s["requests"], s["ok"]) for s in steps] == [(1, 60, 60), (4, 60, 60)]
    for step in steps:
        _check_step(step)
    rows = list(csv.DictReader(out["csv"].read_text().splitlines()))
    assert [(row["concurrency"], row["requests"]) for row in rows] == [("1", "60"), ("4", "60")]
    assert "c=1" in done.stdout and "p99.9" not in done.stdout and "p999" in done.stdout
    from PIL import Image

    with Image.open(out["png"]) as picture:
        assert picture.format == "PNG" and picture.size == (800, 500)


def test_an_open_loop_step_sends_at_the_rate_asked(server: Any, tmp_path: Path) -> None:
    done = _loadtest(server.target, "--rate", "100", "--duration", "2", "--api", "v2",
                     "--batch", "4", "--json", str(tmp_path / "out.json"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    (step,) = json.loads((tmp_path / "out.json").read_text())["steps"]
    _check_step(step)
    assert step["rate"] == 100 and 120 <= step["requests"] <= 280  # Poisson around 200
    assert step["images_per_s"] == pytest.approx(4 * step["ok"] / step["seconds"], rel=0.01)


def test_the_exit_status_follows_max_error_rate(server: Any, tmp_path: Path) -> None:
    args = ("--concurrency", "2", "--requests", "20", "--model", "shoes",
            "--json", str(tmp_path / "out.json"))  # fmt: skip
    failing = _loadtest(server.target, *args, "--max-error-rate", "0.01")
    assert failing.returncode == 1 and "over --max-error-rate" in failing.stderr
    (step,) = json.loads((tmp_path / "out.json").read_text())["steps"]
    assert (step["requests"], step["errors"]) == (20, {"NOT_FOUND": 20})
    assert _loadtest(server.target, *args).returncode == 0  # the default tolerates errors


def test_the_plot_has_labelled_axes_and_a_line_per_percentile(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    results = [
        StepResult(Step(concurrency=c), 2.0, rng.exponential(c, 500), Counter(), 500, 0.1)
        for c in (1, 8, 32)
    ]
    figure = plot(tmp_path / "plot.png", results, "test")
    (axes,) = figure.axes
    assert axes.get_xlabel() == "throughput (requests/s)" and axes.get_ylabel() == "latency (ms)"
    lines = axes.get_lines()
    assert [line.get_label() for line in lines] == ["p50", "p90", "p95", "p99", "p99.9"]
    assert all(len(line.get_xdata()) == 3 for line in lines)
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
