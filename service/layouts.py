"""How MODELS_DIR holds models. Always a repository, MODELS_DIR/NAME/VERSION/. With a model
name (`--model-name`, as KServe starts a server on the `/mnt/models` it mounts), also the two
layouts KServe hands a server for one model, served under that name: the model's versions,
MODELS_DIR/VERSION/, or one version's files in MODELS_DIR itself. Light: the supervisor of
several workers checks the layout with it before starting any."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from convserve.artifact import METADATA_FILE

__all__ = ["problem", "scan"]

log = logging.getLogger(__name__)


def scan(models_dir: Path, model_name: str = "") -> tuple[dict[str, dict[int, Path]], bool]:
    """The version directories by model name, and whether they are served as `model_name`:
    with it, MODELS_DIR itself when it holds metadata.json (one version, as it says), else
    MODELS_DIR/VERSION directories when there are any (one model); otherwise, and always
    without it, MODELS_DIR/NAME/VERSION (hidden names and non-numeric versions skipped)."""
    if not models_dir.is_dir():
        return {}, False
    if model_name:
        if (models_dir / METADATA_FILE).is_file():
            version = _version_of(models_dir)
            return ({model_name: {version: models_dir}} if version else {}), True
        versions = _versions(models_dir)
        if versions:
            return {model_name: versions}, True
    found: dict[str, dict[int, Path]] = {}
    for model_dir in models_dir.iterdir():
        if model_dir.is_dir() and not model_dir.name.startswith("."):
            versions = _versions(model_dir)
            if versions:
                found[model_dir.name] = versions
    return found, False


def problem(models_dir: Path, model_name: str) -> str | None:
    """What is wrong with serving MODELS_DIR as `model_name`, or None: with a model name
    there must be a model to serve from the start (KServe's storage initializer has put it
    there), so a folder in none of the layouts is an error, not a wait."""
    if scan(models_dir, model_name)[0]:
        return None
    what = "does not exist" if not models_dir.is_dir() else "holds no model in any layout"
    return (
        f"--models-dir {models_dir} {what} to serve as {model_name!r}: expected one "
        f"version's files ({METADATA_FILE} and the files it lists), a model's versions (1/, 2/, "
        "…, each one version's files) or a repository (NAME/VERSION/)"
    )


def _versions(model_dir: Path) -> dict[int, Path]:
    return {int(p.name): p for p in model_dir.iterdir() if p.name.isdigit() and p.is_dir()}


def _version_of(directory: Path) -> int:
    """The version one version's metadata.json records (0 if it cannot be read: logged)."""
    path = directory / METADATA_FILE
    try:
        version = json.loads(path.read_text()).get("version")
    except (OSError, ValueError, AttributeError) as exc:
        log.error("cannot serve %s: cannot read it: %s", path, exc)
        return 0
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        log.error("cannot serve %s: version %r, expected a whole number ≥ 1", path, version)
        return 0
    return version
