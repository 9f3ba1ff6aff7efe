"""The strong preset's figures over several seeds: `convserve train --preset strong` once per
seed, one after the other (each has the whole machine), then the spread.

    .venv/bin/python bench/strong_preset.py --seeds 0,1,2 --models-dir /tmp/strong

Prints each run's test accuracy, parameters, epochs, fit and wall time, and the mean, min and
max; the artifacts (with their report/) stay in --models-dir.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/convserve-strong"))
    parser.add_argument("--name", default="strong")
    parser.add_argument("train_args", nargs="*", help="more `convserve train` flags, after --")
    args = parser.parse_args()
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        started = time.perf_counter()
        command = [sys.executable, "-m", "convserve", "train", "--preset", "strong",
                   "--seed", str(seed), "--name", args.name, "--models-dir", str(args.models_dir),
                   *args.train_args]  # fmt: skip
        printed = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        wall = time.perf_counter() - started
        path = Path(printed.split("exported ")[1].split(":")[0])
        meta = json.loads((path / "metadata.json").read_text())
        run = {
            "seed": seed,
            "test_accuracy": meta["evaluation"]["test_accuracy"],
            "parameters": meta["parameters"],
            "epochs": meta["training"]["epochs_run"],
            "fit_minutes": meta["training"]["fit_seconds"] / 60,
            "wall_minutes": wall / 60,
            "stopped": meta["training"]["stopped"] or "all epochs",
            "path": str(path),
        }
        runs.append(run)
        print(f"seed {seed}: test accuracy {run['test_accuracy']:.4f}, {run['parameters']:,} "
              f"parameters, {run['epochs']} epochs ({run['stopped']}), fit "
              f"{run['fit_minutes']:.1f} min, command {run['wall_minutes']:.1f} min → {path}",
              flush=True)  # fmt: skip
    accuracies = [run["test_accuracy"] for run in runs]
    spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    print(f"test accuracy over {len(runs)} seeds: mean {statistics.mean(accuracies):.4f} "
          f"± {spread:.4f} (min {min(accuracies):.4f}, max {max(accuracies):.4f}); "
          f"longest command {max(run['wall_minutes'] for run in runs):.1f} min")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
