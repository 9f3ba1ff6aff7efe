"""The repository's rules — policies, swaps, broken artifacts, load/unload — with a stand-in
loader (the real one is exercised by the integration tests)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from service.errors import ModelLoadError, NotFound, Unavailable
from service.layouts import problem, scan
from service.policies import VersionPolicy
from service.repository import Repository


class Loader:
    """Loads a version directory unless it holds a file named `broken`; counts the calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, path: Path) -> Any:
        self.calls.append(f"{path.parent.name}/{path.name}")
        if (path / "broken").exists():
            raise ModelLoadError(f"{path}: sha256 mismatch")
        return SimpleNamespace(name=path.parent.name, version=int(path.name), class_names=("a",))


def publish(root: Path, name: str, version: int, *, broken: bool = False) -> Path:
    path = root / name / str(version)
    path.mkdir(parents=True)
    (path / "model.keras").write_text("weights")
    if broken:
        (path / "broken").write_text("")
    return path


def served(repository: Repository) -> dict[str, tuple[int, ...]]:
    return {name: repository.versions(name) for name in repository.names}


@pytest.mark.parametrize(
    ("text", "available", "selected"),
    [
        ("latest", [1, 2, 3], {3}),
        ("latest:2", [3, 1, 2], {2, 3}),
        ("all", [1, 2, 3], {1, 2, 3}),
        ("specific:1,3,9", [1, 2, 3], {1, 3}),
    ],
)
def test_version_policies(text: str, available: list[int], selected: set[int]) -> None:
    assert VersionPolicy.parse(text).select(available) == selected
    assert VersionPolicy.parse(str(VersionPolicy.parse(text))) == VersionPolicy.parse(text)


@pytest.mark.parametrize("text", ["latest:0", "newest", "specific:", "specific:a", "all:2"])
def test_bad_policies_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="expected latest, latest:N"):
        VersionPolicy.parse(text)


def test_policy_per_model_and_requests_get_the_latest_served(tmp_path: Path) -> None:
    for version in (1, 2, 3):
        publish(tmp_path, "a", version)
        publish(tmp_path, "b", version)
    repository = Repository(tmp_path, load=Loader(), version_policy="latest:2 b=specific:1")
    repository.load_all()
    assert served(repository) == {"a": (2, 3), "b": (1,)}
    assert repository.get("a").version == 3 and repository.get("a", 2).version == 2
    with pytest.raises(NotFound, match="no version 1; loaded versions: 2, 3"):
        repository.get("a", 1)


def test_before_the_first_sync_lists_are_unavailable_not_empty(tmp_path: Path) -> None:
    publish(tmp_path, "a", 1)
    repository = Repository(tmp_path, load=Loader())
    for read in (repository.status, repository.get):
        with pytest.raises(Unavailable, match="still loading its models"):
            read()
    repository.load_all()
    assert repository.names == ["a"]


@pytest.mark.parametrize(
    ("layout", "served", "renamed"),
    [
        ({"1/metadata.json": "x", "2/metadata.json": "x"}, {"m": {1, 2}}, True),  # versions
        ({"a/1/metadata.json": "x", "b/3/x": "x"}, {"a": {1}, "b": {3}}, False),  # repository
        ({"metadata.json": '{"version": 4}', "model.onnx": "x"}, {"m": {4}}, True),  # a version
        ({"metadata.json": '{"version": "4"}'}, {}, True),  # a version, unreadable: nothing
    ],
)
def test_the_layouts_a_model_name_serves(
    tmp_path: Path, layout: dict[str, str], served: dict[str, set[int]], renamed: bool
) -> None:
    for relative, text in layout.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    found, as_named = scan(tmp_path, "m")
    assert {name: set(versions) for name, versions in found.items()} == served
    assert as_named == renamed
    assert scan(tmp_path)[1] is False  # without a name: always a repository
    assert (problem(tmp_path, "m") is None) == bool(served)


def test_a_new_version_replaces_the_old_and_a_removed_one_leaves(tmp_path: Path) -> None:
    publish(tmp_path, "a", 1)
    loader = Loader()
    repository = Repository(tmp_path, load=loader)
    repository.load_all()
    old = repository.get("a")
    publish(tmp_path, "a", 2)
    repository.sync()
    assert served(repository) == {"a": (2,)} and old.version == 1  # still usable by its holder
    repository.sync()
    assert loader.calls == ["a/1", "a/2"]  # unchanged versions are not reloaded
    (tmp_path / "a" / "2" / "model.keras").unlink()
    (tmp_path / "a" / "2").rmdir()
    repository.sync()
    assert served(repository) == {"a": (1,)}


def test_a_broken_version_is_skipped_and_retried_only_when_its_files_change(
    tmp_path: Path,
) -> None:
    publish(tmp_path, "a", 1)
    loader = Loader()
    repository = Repository(tmp_path, load=loader)
    repository.load_all()
    bad = publish(tmp_path, "a", 2, broken=True)
    repository.sync()
    repository.sync()
    assert served(repository) == {"a": (1,)}  # the old version keeps serving
    assert loader.calls == ["a/1", "a/2"]  # tried once for these files
    entry = next(e for e in repository.index() if e.version == 2)
    assert (entry.state, entry.reason) == ("UNAVAILABLE", f"{bad}: sha256 mismatch")
    (bad / "broken").unlink()  # the copy completes
    repository.sync()
    assert served(repository) == {"a": (2,)}


def test_unload_and_load_on_request(tmp_path: Path) -> None:
    publish(tmp_path, "a", 1)
    publish(tmp_path, "b", 1)
    repository = Repository(tmp_path, load=Loader())
    repository.load_all()
    repository.unload("a")
    repository.sync()  # the watcher does not bring it back
    assert served(repository) == {"b": (1,)}
    assert [e.reason for e in repository.index() if e.name == "a"] == ["unloaded on request"]
    repository.load("a")
    assert served(repository) == {"a": (1,), "b": (1,)}
    with pytest.raises(NotFound, match="no model directory"):
        repository.load("c")
    publish(tmp_path, "c", 1, broken=True)
    with pytest.raises(ModelLoadError, match=r"no version that loads: version 1: .*sha256"):
        repository.load("c")
