"""What is known of the call being answered, for the code that answers it: when its deadline
passes (set by the gRPC boundary, read by the batcher) and which model answered it (set by
the engine, read by the boundary for the metrics' labels)."""

from __future__ import annotations

import contextvars

__all__ = ["ANSWERED_BY", "DEADLINE"]

# When the current call's deadline passes (time.monotonic(), the event loop's clock), if any.
DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)

# The (model, version) the current call resolved to; ("", "") until it resolves one.
ANSWERED_BY: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar(
    "answered_by", default=("", "")
)
