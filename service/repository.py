"""The model repository on disk, MODELS_DIR/NAME/VERSION/: loading, lookup by name and version."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service import metrics
from service.errors import InvalidInput, ModelLoadError, NotFound, Unavailable
from service.model import Model

__all__ = ["IndexEntry", "ModelStatus", "Repository"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexEntry:
    """One version directory in the repository, as the V2 RepositoryIndex reports it."""

    name: str
    version: int
    state: str  # READY or UNAVAILABLE
    reason: str = ""


@dataclass(frozen=True)
class ModelStatus:
    """What `ListModels` reports for one model name."""

    name: str
    versions: tuple[int, ...]
    is_default: bool
    class_names: tuple[str, ...]


class Repository:
    """Every loaded version of every model; requests without a version get the latest."""

    def __init__(
        self, models_dir: Path, default_model: str = "", load: Callable[[Path], Model] = Model.load
    ) -> None:
        self.models_dir = models_dir
        self._default = default_model
        self._load = load
        self._models: dict[str, dict[int, Model]] = {}
        self.loaded = False  # requests get UNAVAILABLE until load_all has finished
        # Versions that failed to load, with the reason, e.g. {"fashion/3": "sha256 ..."}.
        self.failures: dict[str, str] = {}

    def load_all(self) -> None:
        """Load every version directory; a broken one is logged and skipped, the rest serve."""
        if not self.models_dir.is_dir():
            log.error(
                "models dir %s does not exist; train a model with `convserve train`",
                self.models_dir,
            )
            self.loaded = True
            return
        models: dict[str, dict[int, Model]] = {}
        for model_dir in sorted(
            p for p in self.models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            for version_dir in sorted(
                (p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
            ):
                try:
                    model = self._load(version_dir)
                except ModelLoadError as exc:
                    self._failed(version_dir, str(exc))
                except Exception as exc:  # a broken artifact must not stop the others
                    log.exception("loading %s failed", version_dir)
                    self._failed(version_dir, f"{type(exc).__name__}: {exc}")
                else:
                    models.setdefault(model.name, {})[model.version] = model
                    metrics.MODEL_LOADED.labels(model.name, str(model.version)).set(1)
        self._models, self.loaded = models, True  # all at once: no request sees half a load
        if self._default and self._default not in self._models:
            log.error(
                "default model %r is not loaded; loaded: %s",
                self._default,
                ", ".join(self._models) or "none",
            )

    def _failed(self, path: Path, reason: str) -> None:
        log.error("cannot serve %s: %s", path, reason)
        self.failures[f"{path.parent.name}/{path.name}"] = reason
        metrics.MODEL_LOAD_FAILURES.labels(path.parent.name).inc()

    @property
    def names(self) -> list[str]:
        return sorted(self._models)

    @property
    def ready(self) -> bool:
        """Loaded, with at least one model, and the default model among them."""
        return self.loaded and bool(self._models) and self.default_ready

    @property
    def default_ready(self) -> bool:
        """False when a configured default model did not load: requests naming none would fail."""
        return not self._default or self._default in self._models

    @property
    def default_name(self) -> str | None:
        """The model that answers requests naming none: the configured one, or the only one."""
        if self._default:
            return self._default
        return self.names[0] if len(self._models) == 1 else None

    def get(self, name: str = "", version: int = 0) -> Model:
        """The model `name` (default if empty) at `version` (latest if 0)."""
        if not self.loaded:
            raise Unavailable("the server is still loading its models; retry shortly")
        if not name:
            default = self.default_name
            if default is None:
                raise InvalidInput(
                    "the request names no model and this server has no default; "
                    f"name one of: {', '.join(self.names) or '(none loaded)'}"
                )
            name = default
        versions = self._models.get(name)
        if versions is None:
            raise NotFound(
                f"model {name!r} is not loaded; loaded models: {', '.join(self.names) or 'none'}"
            )
        if version < 0:
            raise InvalidInput(f"version must be positive (or 0 for the latest), got {version}")
        if version == 0:
            return versions[max(versions)]
        model = versions.get(version)
        if model is None:
            raise NotFound(
                f"model {name!r} has no version {version}; loaded versions: "
                f"{', '.join(map(str, sorted(versions)))}"
            )
        return model

    def versions(self, name: str) -> tuple[int, ...]:
        return tuple(sorted(self._models.get(name, {})))

    def index(self) -> list[IndexEntry]:
        """Every version loaded or tried, by name and version."""
        entries = [
            IndexEntry(name, version, "READY")
            for name, versions in self._models.items()
            for version in versions
        ]
        for key, reason in self.failures.items():
            name, version = key.split("/")
            entries.append(IndexEntry(name, int(version), "UNAVAILABLE", reason))
        return sorted(entries, key=lambda entry: (entry.name, entry.version))

    def status(self) -> list[ModelStatus]:
        default = self.default_name
        return [
            ModelStatus(name, self.versions(name), name == default, self.get(name).class_names)
            for name in self.names
        ]
