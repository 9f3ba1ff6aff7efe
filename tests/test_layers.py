"""The layers, read from the AST of every file: client/, service/ and training/ import only
the core (convserve/) and themselves, never each other, not even inside a function; the core
imports none of them; generated stubs live only in the core.

`python tests/test_layers.py` prints every import edge between the packages.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("convserve", "client", "service", "training")
# What each package may import of the others: the core stands alone, the rest stand on it.
ALLOWED = {
    "convserve": set(),
    "client": {"convserve"},
    "service": {"convserve"},
    "training": {"convserve"},
}


def imported_modules(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, module) of every import anywhere in the tree, functions and TYPE_CHECKING too."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def edges() -> list[tuple[str, str, str]]:
    """(importing file:line, its package, the imported module) across package lines."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for line, module in imported_modules(tree):
                top = module.split(".")[0]
                if top in PACKAGES and top != package:
                    found.append((f"{path.relative_to(ROOT)}:{line}", package, module))
    return found


def test_each_package_imports_only_the_core_and_itself() -> None:
    crossing = [
        f"{where} imports {module}"
        for where, package, module in edges()
        if module.split(".")[0] not in ALLOWED[package]
    ]
    assert not crossing, "\n".join(crossing)


def test_generated_stubs_live_only_in_the_core() -> None:
    stubs = [
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / package).rglob("*_pb2*.py")
    ]
    assert stubs and all(path.startswith("convserve/api/") for path in stubs), stubs


if __name__ == "__main__":
    for where, _, module in edges():
        print(f"{where} -> {module}")
    sys.exit(0)
