"""The model repository on disk, MODELS_DIR/NAME/VERSION/ (or another of service.layouts):
what is served, kept in sync.

`sync()` compares the directory with what is loaded: versions the policy wants are loaded
and warmed first, then the new set of models replaces the old one in a single assignment,
so a request sees either the old set or the new one. A version that leaves the set is no
longer handed out; requests already holding it finish on it (they keep their reference).
A version that fails to load (half-written, corrupt, wrong shapes) is logged and counted,
the versions serving keep serving, and it is retried once its files change.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service import metrics
from service.errors import InvalidInput, ModelLoadError, NotFound, Unavailable
from service.layouts import scan
from service.model import Model
from service.policies import parse_policies

__all__ = ["IndexEntry", "ModelStatus", "Repository"]

log = logging.getLogger(__name__)

# What identifies a version directory's contents: (file name, size, mtime) of each file.
Signature = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class IndexEntry:
    """One version directory, as the V2 RepositoryIndex reports it."""

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
    origin: str  # the latest version's, see Metadata.describe_origin


class Repository:
    """The served versions of every model; requests without a version get the latest."""

    def __init__(
        self,
        models_dir: Path,
        default_model: str = "",
        load: Callable[..., Model] = Model.load,
        version_policy: str = "latest:1",
        model_name: str = "",
    ) -> None:
        self.models_dir = models_dir
        self.model_name = model_name
        self._default = default_model or model_name
        self._load = load
        self._policy, self._policies = parse_policies(version_policy)
        self._models: dict[str, dict[int, Model]] = {}  # replaced whole, never changed in place
        self._signatures: dict[tuple[str, int], Signature] = {}
        self._failures: dict[tuple[str, int], tuple[Signature, str]] = {}
        self.unloaded: set[str] = set()  # unloaded on request (or at start): not until loaded
        self._disk: dict[str, dict[int, Path]] = {}
        self._renamed = False  # the disk's one model is served as model_name
        self._lock = threading.Lock()  # one sync at a time (the watcher, load/unload calls)
        self.loaded = False  # requests get UNAVAILABLE until the first sync has finished

    # -- keeping in sync with the directory ------------------------------------------------

    def load_all(self) -> None:
        """The first sync, at start-up."""
        if not self.models_dir.is_dir():
            log.error(
                "models dir %s does not exist; train a model with `convserve train`",
                self.models_dir,
            )
        self.sync()
        self.loaded = True
        if self._default and self._default not in self._models:
            log.error(
                "default model %r is not loaded; loaded: %s",
                self._default,
                ", ".join(self._models) or "none",
            )

    def sync(self, name: str | None = None, *, retry: bool = False) -> None:
        """Bring every model (or just `name`) in line with the directory and the policy.

        `retry` also retries versions that failed before with the same files.
        """
        with self._lock:
            self._disk, self._renamed = scan(self.models_dir, self.model_name)
            models = dict(self._models)
            names = [name] if name else sorted(set(self._disk) | set(models))
            for model_name in names:
                versions = self._sync_model(model_name, models.get(model_name, {}), retry)
                if versions:
                    models[model_name] = versions
                else:
                    models.pop(model_name, None)
            self._models = models  # the swap: one assignment

    def _sync_model(self, name: str, loaded: dict[int, Model], retry: bool) -> dict[int, Model]:
        on_disk = {} if name in self.unloaded else self._disk.get(name, {})
        policy = self._policies.get(name, self._policy)
        broken = {
            version
            for version, path in on_disk.items()
            if not retry and self._failures.get((name, version), (None,))[0] == _signature(path)
        }
        staged: dict[int, Model] = {}  # loaded (or kept) during this sync
        while True:  # a version that fails to load makes room for the next one the policy allows
            wanted = policy.select([v for v in on_disk if v not in broken])
            for version in sorted(wanted - set(staged), reverse=True):
                path = on_disk[version]
                signature = _signature(path)
                current = loaded.get(version)
                if current is None or self._signatures.get((name, version)) != signature:
                    current = self._try_load(name, version, path, signature)
                if current is None:
                    broken.add(version)
                    break
                staged[version] = current
            else:
                break
        kept = {version: staged[version] for version in wanted}
        for key in [
            k for k in self._failures if k[0] == name and k[1] not in self._disk.get(name, {})
        ]:
            del self._failures[key]  # its directory is gone
        for version in sorted(set(loaded) - set(kept)):
            log.info("unloaded %s version %d (in-flight requests finish on it)", name, version)
            metrics.MODEL_LOADED.labels(name, str(version)).set(0)
            self._signatures.pop((name, version), None)
        for version in sorted(set(kept) - set(loaded)):
            metrics.MODEL_LOADED.labels(name, str(version)).set(1)
        return kept

    def _try_load(self, name: str, version: int, path: Path, signature: Signature) -> Model | None:
        try:
            model = self._load(path, name=name) if self._renamed else self._load(path)
        except ModelLoadError as exc:
            reason = str(exc)
        except Exception as exc:  # a broken artifact must not stop the others
            log.exception("loading %s failed", path)
            reason = f"{type(exc).__name__}: {exc}"
        else:
            self._signatures[(name, version)] = signature
            self._failures.pop((name, version), None)
            return model
        log.error("cannot serve %s: %s", path, reason)
        self._failures[(name, version)] = (signature, reason)
        metrics.MODEL_LOAD_FAILURES.labels(name).inc()
        return None

    def load(self, name: str) -> None:
        """(Re)load `name` from the directory now, retrying failed versions; undoes `unload`."""
        if name not in scan(self.models_dir, self.model_name)[0]:
            raise NotFound(f"no model directory {self.models_dir / name}")
        self.unloaded.discard(name)
        self.sync(name, retry=True)
        if name not in self._models:
            reasons = [
                f"version {version}: {reason}"
                for (model, version), (_, reason) in sorted(self._failures.items())
                if model == name
            ]
            raise ModelLoadError(
                f"model {name!r} has no version that loads: {'; '.join(reasons) or 'none on disk'}"
            )

    def unload(self, name: str) -> None:
        """Stop serving every version of `name` until `load(name)`."""
        if name not in self._models and name not in self._disk:
            raise NotFound(f"model {name!r} is neither loaded nor in {self.models_dir}")
        self.unloaded.add(name)
        self.sync(name)

    # -- lookups ---------------------------------------------------------------------------

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
        self._check_loaded()
        models = self._models  # one snapshot for the whole lookup
        if not name:
            default = self.default_name
            if default is None:
                raise InvalidInput(
                    "the request names no model and this server has no default; "
                    f"name one of: {', '.join(self.names) or '(none loaded)'}"
                )
            name = default
        versions = models.get(name)
        if versions is None:
            raise NotFound(
                f"model {name!r} is not loaded; "
                f"loaded models: {', '.join(sorted(models)) or 'none'}"
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
        """Every version on disk or loaded, with why it is not served when it is not."""
        models = self._models
        keys = {(n, v) for n, versions in self._disk.items() for v in versions}
        keys |= {(n, v) for n, versions in models.items() for v in versions}
        entries = []
        for name, version in sorted(keys):
            if version in models.get(name, {}):
                entries.append(IndexEntry(name, version, "READY"))
            elif (name, version) in self._failures:
                entries.append(
                    IndexEntry(name, version, "UNAVAILABLE", self._failures[name, version][1])
                )
            elif name in self.unloaded:
                entries.append(IndexEntry(name, version, "UNAVAILABLE", "unloaded on request"))
            else:
                policy = self._policies.get(name, self._policy)
                entries.append(
                    IndexEntry(name, version, "UNAVAILABLE", f"not in version policy {policy}")
                )
        return entries

    def _check_loaded(self) -> None:
        if not self.loaded:
            raise Unavailable("the server is still loading its models; retry shortly")

    def status(self) -> list[ModelStatus]:
        """The served models (ListModels); UNAVAILABLE until the first sync has finished, not
        an empty list that a caller would take for the truth."""
        self._check_loaded()
        default = self.default_name
        statuses = []
        for name, versions in sorted(self._models.items()):
            latest = versions[max(versions)]
            origin = latest.metadata.describe_origin()
            listed = tuple(sorted(versions))
            statuses.append(ModelStatus(name, listed, name == default, latest.class_names, origin))
        return statuses


def _signature(path: Path) -> Signature:
    try:
        files = sorted(p for p in path.iterdir() if p.is_file())
        return tuple((p.name, (s := p.stat()).st_size, s.st_mtime_ns) for p in files)
    except OSError:  # removed while we looked
        return ()
