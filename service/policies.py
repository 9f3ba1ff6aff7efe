"""Version policies: which versions of a model the repository serves.

Plain Python: the settings validate `--version-policy` with it in every process.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["VersionPolicy", "parse_policies"]


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model to serve: `latest:N`, `all`, or `specific:V,V,...`."""

    kind: str = "latest"
    count: int = 1
    versions: frozenset[int] = frozenset()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        kind, _, argument = text.partition(":")
        try:
            if kind == "latest":
                policy = cls("latest", int(argument or 1))
                if policy.count >= 1:
                    return policy
            elif kind == "all" and not argument:
                return cls("all")
            elif kind == "specific" and argument:
                return cls("specific", versions=frozenset(int(v) for v in argument.split(",")))
        except ValueError:
            pass
        raise ValueError(
            f"version policy {text!r}: expected latest, latest:N (N >= 1), all, or specific:V,V,..."
        )

    def select(self, available: list[int]) -> set[int]:
        if self.kind == "all":
            return set(available)
        if self.kind == "specific":
            return set(self.versions & set(available))
        return set(sorted(available)[-self.count :])

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.count}"
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, sorted(self.versions)))
        return self.kind


def parse_policies(text: str) -> tuple[VersionPolicy, dict[str, VersionPolicy]]:
    """ "latest:1 fashion=all" → (the default policy, per-model policies)."""
    default, per_model = VersionPolicy(), {}
    for entry in text.split():
        name, _, policy = entry.rpartition("=")
        if name:
            per_model[name] = VersionPolicy.parse(policy)
        else:
            default = VersionPolicy.parse(policy)
    return default, per_model
