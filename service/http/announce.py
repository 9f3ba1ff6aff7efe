"""The start-up log line's pointer to the explorer page: apart from the page's routes, so
that `convserve serve`'s supervisor, which serves no HTTP, does not import aiohttp for it."""

from __future__ import annotations

from service.settings import Settings

__all__ = ["announcement"]


def announcement(settings: Settings, port: int | None) -> str:
    """'; the explorer page: http://localhost:8080/' for the start-up log line, when the page
    is served on `port`."""
    if not settings.explorer or not port:
        return ""
    host = settings.host
    if host in ("", "0.0.0.0", "::"):
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    scheme = "https" if settings.tls_cert else "http"
    return f"; the explorer page: {scheme}://{host}:{port}/"
