"""Settings from defaults, CONVSERVE_* variables and flags, and their table in docs/serving.md."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from service.main import add_arguments
from service.settings import Settings, settings_table

ROOT = Path(__file__).resolve().parents[2]


def _parse(argv: list[str]) -> Settings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(argv)
    return Settings(**vars(args))


def test_flags_override_environment_override_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().port == 50051
    monkeypatch.setenv("CONVSERVE_PORT", "6000")
    monkeypatch.setenv("CONVSERVE_MODELS_DIR", "/srv/models")
    assert _parse([]).port == 6000
    settings = _parse(["--port", "7000", "--log-level", "DEBUG"])
    assert (settings.port, settings.models_dir, settings.log_level) == (
        7000,
        Path("/srv/models"),
        "DEBUG",
    )


def test_invalid_values_are_refused() -> None:
    with pytest.raises(ValueError, match="port"):
        Settings(port=70000)
    with pytest.raises(SystemExit):
        _parse(["--log-level", "LOUD"])


def test_the_serving_docs_document_every_setting() -> None:
    assert settings_table() in (ROOT / "docs" / "serving.md").read_text(), (
        "docs/serving.md's settings table differs from service/settings.py: run `make docs`"
    )
