"""The explorer page: `GET /` and its files under `/explorer/`, plain HTML, CSS and JavaScript
modules shipped in the package (service/http/page/), with no build step and nothing loaded
from elsewhere (its Content-Security-Policy allows this origin only). The page calls the
HTTP door's public API like any other client: what it shows is what the server answers."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from service.http.door import Door

__all__ = ["PAGE", "add_routes"]

PAGE = Path(__file__).with_name("page")

TYPES = {
    ".html": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
    "style-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated (ETag): a new release shows at once
}


def add_routes(door: Door) -> None:
    files = {path.name: path for path in PAGE.iterdir() if path.suffix in TYPES}

    async def index(request: web.Request) -> web.StreamResponse:
        return _file(files["index.html"])

    async def file(request: web.Request) -> web.StreamResponse:
        path = files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return _file(path)

    door.app.router.add_get("/", index)
    door.app.router.add_get("/explorer/{name}", file)


def _file(path: Path) -> web.FileResponse:
    response = web.FileResponse(path, headers=HEADERS)
    response.content_type = TYPES[path.suffix]
    if path.suffix in (".html", ".css", ".js", ".svg"):
        response.charset = "utf-8"
    return response
