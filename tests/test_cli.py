"""The `convserve` command as a user runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from convserve.cli import main


@pytest.mark.integration
def test_train_command_exports_a_model(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "convserve",
            "train",
            "--preset",
            "small",
            "--name",
            "shoes",
            "--models-dir",
            str(tmp_path),
            "--classes",
            "Sandal, Sneaker,Ankle boot",
            "--conv",
            "3:5:same:2",
            "--epochs",
            "1",
            "--seed",
            "5",
            "--train-limit",
            "600",
            "--test-limit",
            "200",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert f"exported {tmp_path / 'shoes' / '1'}: test accuracy" in completed.stdout
    meta = json.loads((tmp_path / "shoes" / "1" / "metadata.json").read_text())
    assert meta["classes"] == ["Sandal", "Sneaker", "Ankle boot"]
    assert meta["training"]["seed"] == 5
    assert meta["layers"][0]["kernel_size"] == [5, 5]
    assert meta["layers"][0]["output_shape"] == [14, 14, 3]

    # A metadata.json is a config: retraining from it gives the next version of the same model.
    assert main(["train", "--config", str(tmp_path / "shoes/1/metadata.json"), "--name", "shoes",
                 "--models-dir", str(tmp_path), "--quiet"]) == 0  # fmt: skip
    again = json.loads((tmp_path / "shoes" / "2" / "metadata.json").read_text())
    assert again["training"]["config"] == meta["training"]["config"]
    assert again["evaluation"]["test_accuracy"] == meta["evaluation"]["test_accuracy"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--classes", "Shirt,Socks"], "unknown class 'Socks'"),
        (["--conv", "8:3:full"], "unknown padding 'full'"),
        (["--conv", "8:x"], "conv spec '8:x'"),
        (["--conv", "8:30"], r"conv layer 1 \(conv2d\): kernel 30 is larger than its 28x28 input"),
        (["--preset", "huge"], "unknown preset 'huge'; expected one of seed, small, deep"),
        (["--name", "a/b"], "model name 'a/b'"),
        (["--config", "/nonexistent.json"], "No such file"),
        (["--data-dir", "/tmp"], "no Fashion-MNIST IDX files"),
    ],
)
def test_bad_arguments_are_one_line_errors(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--models-dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convserve train: error: ")
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not any(tmp_path.iterdir())  # nothing was trained or exported
