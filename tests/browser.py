"""The explorer page in a real browser: Debian's Chromium (installed by `make test`) driven by
Playwright with `executable_path` — never `playwright install`, nothing is downloaded."""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As root, headless, and quiet on a machine with no network: no background connections.
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-quic",
]  # fmt: skip
SECONDS = 60  # the longest a page waits for the server's answers
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Page:
    """One tab on the explorer, with the console errors and uncaught exceptions it had."""

    def __init__(self, browser: Any, url: str, viewport: dict[str, int] = DESKTOP) -> None:
        self.context = browser.new_context(viewport=viewport)
        self.context.set_default_timeout(SECONDS * 1000)
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.requests: list[str] = []  # every URL the page asked for
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(f"exception: {error}"))
        self.page.goto(url)

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(f"console {message.type}: {message.text}")

    def pane(self, index: int = 0) -> Any:
        return self.page.locator(".pane").nth(index)

    def wait_for_model(self, index: int = 0) -> Any:
        """The pane, once its model's layers are listed."""
        pane = self.pane(index)
        pane.locator(".layers tbody tr").first.wait_for()
        return pane

    def upload(self, data: bytes, name: str = "image.png", mime: str = "image/png") -> None:
        """Choose the file, and wait until the page has taken it (and cleared what it showed
        of the last image)."""
        taken = self.images_taken()
        self.page.set_input_files("#file", files=[{"name": name, "mimeType": mime, "buffer": data}])
        self.page.wait_for_function(
            "(n) => Number(document.body.dataset.images || 0) > n", arg=taken
        )

    def images_taken(self) -> int:
        """How many images the page has taken (chosen, dropped, pasted or drawn)."""
        return int(self.page.evaluate("() => Number(document.body.dataset.images || 0)"))

    def wait_analysed(self, index: int = 0) -> Any:
        """The pane, once its prediction, feature maps and three explanations are drawn."""
        pane = self.pane(index)
        self.page.wait_for_function(
            """(pane) => pane.querySelector('.bars li')
                && pane.querySelector('.channels canvas')
                && pane.querySelectorAll('.heat figcaption').length === 3
                && [...pane.querySelectorAll('.heat figcaption')]
                    .every((c) => !c.textContent.endsWith('…'))""",
            arg=pane.element_handle(),
            timeout=SECONDS * 1000,
        )
        return pane

    def colours(self, canvas: Any) -> dict[str, int]:
        """A canvas's pixels: how many, how many opaque, how many distinct colours."""
        result: dict[str, int] = canvas.evaluate(
            """(c) => {
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                const seen = new Set();
                let opaque = 0;
                for (let i = 0; i < d.length; i += 4) {
                    seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
                    if (d[i + 3] === 255) opaque++;
                }
                return {pixels: d.length / 4, opaque, distinct: seen.size};
            }"""
        )
        return result

    def close(self) -> None:
        self.context.close()


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
