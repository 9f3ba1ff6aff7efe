"""The explorer page's load and first-paint times, in Debian's Chromium on loopback, and its
screenshots for the docs.

    .venv/bin/python bench/explorer.py --models-dir models --model fashion [--rounds 10]
        [--screenshots docs/images] [--version-policy all]

Each round opens the page in a fresh browser context (nothing cached) and reads the browser's
own timings (Navigation Timing, Paint Timing): the HTML received, DOMContentLoaded, load, first
contentful paint; then when the model's layers are listed (ListModels + GetModelMetadata
answered and drawn) and, after a Fashion-MNIST test image is chosen, when every panel is drawn
(Predict, FeatureMap, Filters and three Explain calls). Medians and the slowest round are
printed, in milliseconds from the start of navigation.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from common import ROOT, free_port, start_convserve

from convserve import fashion_mnist

sys.path.insert(0, str(ROOT))  # the browser helpers live with the tests
from tests.browser import DESKTOP, PHONE, Page, chromium, png

NAVIGATION = """() => {
    const n = performance.getEntriesByType('navigation')[0];
    const paint = performance.getEntriesByName('first-contentful-paint')[0];
    return {html: n.responseEnd, dom: n.domContentLoadedEventEnd, load: n.loadEventEnd,
            fcp: paint ? paint.startTime : null};
}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="fashion")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--screenshots", type=Path, help="write the docs' screenshots here")
    parser.add_argument("--version-policy", default="all",
                        help="versions served (all: the compare screenshot shows two)")  # fmt: skip
    args = parser.parse_args()

    http_port = free_port()
    process, _, _, _ = start_convserve(
        args.models_dir,
        args.model,
        "--workers",
        "1",
        "--version-policy",
        args.version_policy,
        http_port=http_port,
    )
    url = f"http://127.0.0.1:{http_port}/"
    image = png(fashion_mnist.load("test", limit=1).images[0])
    try:
        with chromium() as browser:
            figures: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                for name, value in measure(browser, url, image).items():
                    figures.setdefault(name, []).append(value)
            print(f"explorer page, {args.rounds} rounds, fresh browser context each (ms):")
            for name, values in figures.items():
                print(f"  {name:<42} median {statistics.median(values):7.1f}   "
                      f"slowest {max(values):7.1f}")  # fmt: skip
            if args.screenshots:
                screenshots(browser, url, image, args.screenshots)
    finally:
        process.terminate()
        process.wait(30)


def measure(browser: object, url: str, image: bytes) -> dict[str, float]:
    page = Page(browser, url)
    try:
        page.wait_for_model()
        listed = page.page.evaluate("() => performance.now()")
        timings = page.page.evaluate(NAVIGATION)
        started = time.perf_counter()
        page.upload(image)
        page.wait_analysed()
        analysed = (time.perf_counter() - started) * 1000
        assert page.problems == [], page.problems
        return {
            "HTML received": timings["html"],
            "DOMContentLoaded": timings["dom"],
            "load": timings["load"],
            "first contentful paint": timings["fcp"],
            "model's layers listed": listed,
            "image chosen → every panel drawn": analysed,
        }
    finally:
        page.close()


def screenshots(browser: object, url: str, image: bytes, folder: Path) -> None:
    """explorer.png (1280×800, the whole page), explorer-compare.png (two versions side by
    side, when the model has two) and explorer-phone.png (390 wide)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, viewport, compare in (
        ("explorer.png", DESKTOP, False),
        ("explorer-compare.png", {"width": 1600, "height": 1000}, True),
        ("explorer-phone.png", PHONE, False),
    ):
        page = Page(browser, url, viewport=viewport)
        try:
            page.wait_for_model()
            page.upload(image, "ankle-boot.png")
            page.wait_analysed()
            if compare:
                page.page.locator("#compare").check()
                page.wait_for_model(1)
                page.wait_analysed(1)
            pane = page.pane()
            pane.locator(".zoom").click(position={"x": 60, "y": 90})
            page.page.evaluate("() => window.scrollTo(0, 0)")  # clicking scrolled the page
            path = folder / name
            page.page.screenshot(path=str(path), full_page=True)
            print(f"wrote {path}")
        finally:
            page.close()


if __name__ == "__main__":
    main()
