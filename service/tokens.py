"""Bearer tokens as the settings give them: TOKEN:SCOPE entries → SHA-256 digests and scopes.

Plain Python (no gRPC): the settings validate the tokens with it, in every process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

__all__ = ["MIN_TOKEN_LENGTH", "SCOPES", "Tokens", "digest", "load_tokens", "parse_tokens"]

SCOPES = ("inference", "admin")
MIN_TOKEN_LENGTH = 16

Tokens = list[tuple[bytes, str]]  # (SHA-256 of a token, its scope)


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_tokens(entries: Sequence[str], source: str) -> Tokens:
    """TOKEN:SCOPE entries → digests and scopes; errors name the entry, never the token."""
    tokens = []
    for number, entry in enumerate(entries, 1):
        token, _, scope = entry.rpartition(":")
        if scope not in SCOPES or not token:
            raise ValueError(
                f"{source}: entry {number} is not TOKEN:SCOPE with scope inference or admin"
            )
        if len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"{source}: the token of entry {number} is shorter than {MIN_TOKEN_LENGTH} "
                "characters"
            )
        tokens.append((digest(token), scope))
    return tokens


def load_tokens(settings: Any) -> Tokens:
    """Every token the settings give: the environment's and the file's (# starts a comment)."""
    tokens = parse_tokens(settings.auth_tokens.get_secret_value().split(), "auth_tokens")
    if settings.auth_tokens_file is not None:
        path = settings.auth_tokens_file
        lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
        tokens += parse_tokens([line for line in lines if line], str(path))
    return tokens
