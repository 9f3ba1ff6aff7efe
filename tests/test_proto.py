"""The committed stubs are what `make proto` generates from proto/ today."""

from __future__ import annotations

import filecmp
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    subprocess.run(
        ["make", "-s", "proto", f"PB_DIR={tmp_path}"], cwd=ROOT, check=True, capture_output=True
    )
    committed = ROOT / "convserve" / "api" / "pb"
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    existing = sorted(
        p.relative_to(committed)
        for p in committed.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    assert generated == existing, "run `make proto`: files differ"
    changed = [
        str(p) for p in generated if not filecmp.cmp(tmp_path / p, committed / p, shallow=False)
    ]
    assert not changed, f"run `make proto`: {changed} drifted from proto/"
