"""The explorer page at / of the HTTP port, in Debian's Chromium: what it shows is what the
server's API answers (checked here against the gRPC client), for convserve's models, a model
trained on an RGB image folder and an imported ONNX model."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client import Client
from convserve.artifact import Layer
from convserve.fashion_mnist import Dataset
from service.http.explorer import PAGE
from tests.browser import PHONE, Page, chromium, png
from tests.conftest import RunningServer, serving


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    """open_page(server, **options) → a Page on the server's explorer; closed after the test."""
    pages: list[Page] = []

    def open_(server: RunningServer, **options: Any) -> Page:
        page = Page(browser, f"http://127.0.0.1:{server.server.http_port}/", **options)
        pages.append(page)
        return page

    yield open_
    for page in pages:
        page.close()


@pytest.fixture(scope="module")
def shoe(test_images: Dataset) -> bytes:
    return png(test_images.images[0])


def choose(page: Page, model: str, index: int = 0) -> Any:
    pane = page.pane(index)
    pane.locator(".model-select").select_option(model)
    page.page.wait_for_function(
        "([pane, model]) => pane.querySelector('.summary').textContent.startsWith(model + ' ')",
        arg=[pane.element_handle(), model],
    )
    return pane


def look(page: Page, model: str, image: bytes) -> Any:
    """Pick `model` in the first pane and send `image`: the pane, once every panel is drawn."""
    choose(page, model)
    page.upload(image)
    return page.wait_analysed()


def wait_for_legend(page: Page, pane: Any, start: str) -> None:
    """Until the feature maps' colour scale is labelled `start`…: the chosen maps are drawn."""
    page.page.wait_for_function(
        "([p, start]) => p.querySelector('.map-legend').textContent.startsWith(start)",
        arg=[pane.element_handle(), start],
    )


def probabilities(pane: Any) -> dict[str, float]:
    rows = pane.locator(".bars li")
    return {
        rows.nth(i).get_attribute("data-class"): float(
            rows.nth(i).get_attribute("data-probability")
        )
        for i in range(rows.count())
    }


def test_the_page_loads_without_console_errors_and_shows_the_default_model(
    server, open_page, shoe: bytes
) -> None:
    page = open_page(server)
    pane = page.wait_for_model()
    with Client(server.target) as client:
        served = [model.name for model in client.list_models()]
        info = client.metadata(model="fashion")
    options = pane.locator(".model-select option").all_inner_texts()
    assert options == served
    assert pane.locator(".model-select").input_value() == "fashion"  # the default model
    assert page.page.locator("#server-status").inner_text().endswith(f"{', '.join(served)}.")
    rows = pane.locator(".layers tbody tr")
    assert [rows.nth(i).get_attribute("data-layer") for i in range(rows.count())] == [
        layer.name for layer in info.layers
    ]
    page.upload(shoe, "shoe.png")
    page.wait_analysed()
    assert page.page.locator("#pad").is_visible()  # a 28×28 grayscale model can be drawn for
    assert page.problems == []
    origin = f"http://127.0.0.1:{server.server.http_port}/"
    assert [url for url in page.requests if not url.startswith((origin, "blob:", "data:"))] == []
    assert {url.split("/")[-1] for url in page.requests if "/explorer/" in url} == {
        path.name for path in PAGE.iterdir()
    } - {"index.html"}  # every file of the page is used


def test_the_page_is_served_with_its_security_headers_and_can_be_turned_off(
    server, models_dir: Path
) -> None:
    base = f"http://127.0.0.1:{server.server.http_port}"
    with urllib.request.urlopen(f"{base}/") as response:
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert response.headers["Content-Security-Policy"].startswith("default-src 'self';")
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    with urllib.request.urlopen(f"{base}/explorer/main.js") as response:
        assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
    for missing in ("/explorer/nothing.js", "/explorer/..%2Fexplorer.py"):
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(f"{base}{missing}")
        assert error.value.code == 404
    # Every API answer says how long the server took (the page shows it).
    request = urllib.request.Request(
        f"{base}/convserve.v1.ConvServe/ListModels", b"{}", {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request) as response:
        assert re.fullmatch(r"convserve;dur=\d+\.\d\d", response.headers["Server-Timing"])
    with own_settings(models_dir, explorer=False) as plain:
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(f"http://127.0.0.1:{plain.server.http_port}/")
        assert error.value.code == 404
        assert json.loads(error.value.read())["error"].startswith("GET /: Not Found")


def test_an_uploaded_png_shows_the_class_grpc_predict_gives(
    server, open_page, test_images: Dataset
) -> None:
    page = open_page(server)
    pane = page.wait_for_model()
    with Client(server.target) as client:
        for image in test_images.images[:3]:
            page.upload(png(image), "item.png")
            page.wait_analysed()
            expected = client.predict(image[None], top_k=10)
            shown = probabilities(pane)
            assert list(shown) == list(expected.class_names)  # every class, as bars
            np.testing.assert_allclose(list(shown.values()), expected.probabilities[0], atol=1e-6)
            top = pane.locator(".bars li.top").get_attribute("data-class")
            assert top == expected.top[0][0].name


def test_feature_maps_one_picture_per_channel_on_a_shared_scale(
    server, open_page, test_images: Dataset
) -> None:
    image = test_images.images[1]
    page = open_page(server)
    pane = look(page, "layers", png(image))
    with Client(server.target) as client:
        info = client.metadata(model="layers")
        for layer in [layer.name for layer in info.layers if len(layer.output_shape) == 3]:
            pane.locator(".layer-select").select_option(layer)
            wait_for_legend(page, pane, f"{layer},")
            maps = client.feature_map(image[None], model="layers", layer=layer).activations[0]
            canvases = pane.locator(".channels canvas")
            assert canvases.count() == maps.shape[-1], layer
            for channel in range(maps.shape[-1]):
                picture = page.colours(canvases.nth(channel))
                assert picture["pixels"] == maps.shape[0] * maps.shape[1]
                assert picture["opaque"] == picture["pixels"]  # drawn, every unit
                varies = bool(np.ptp(maps[..., channel]) > 1e-6)
                assert (picture["distinct"] > 1) == varies, (layer, channel)
            low, high = float(maps.min()), float(maps.max())
            ticks = pane.locator(".map-legend .ticks span").all_inner_texts()
            assert float(ticks[0]) == pytest.approx(-max(-low, high) if low < 0 else low, rel=0.01,
                                                    abs=1e-3)  # fmt: skip
            assert float(ticks[-1]) == pytest.approx(max(-low, high), rel=0.01, abs=1e-3)
    # The pre-activation switch: the convolution before its activation, with negative values.
    pane.locator(".layer-select").select_option(info.layers[0].name)
    pane.locator(".pre").check()
    wait_for_legend(page, pane, f"{info.layers[0].name}, before the activation")
    assert float(pane.locator(".map-legend .ticks span").first.inner_text()) < 0


def test_the_output_size_shown_equals_the_metadata_and_the_returned_shape(
    server, open_page, test_images: Dataset
) -> None:
    """The `layers` model: same and valid padding, stride 2, dilation 2, a pooling layer."""
    image = test_images.images[2]
    page = open_page(server)
    pane = look(page, "layers", png(image))
    with Client(server.target) as client:
        info = client.metadata(model="layers")
        windowed = [layer for layer in info.layers if layer.kernel_size]
        assert {layer.type for layer in windowed} == {"Conv2D", "MaxPooling2D"}
        for layer in windowed:
            pane.locator(".layer-select").select_option(layer.name)
            row = pane.locator(f'.layers tr[data-layer="{layer.name}"]')
            returned = client.feature_map(image[None], model="layers", layer=layer.name)
            shape = "×".join(map(str, returned.activations.shape[1:]))
            page.page.wait_for_function(
                "([cell, shape]) => cell.textContent === shape",
                arg=[row.locator(".returned").element_handle(), shape],
            )
            computed = row.locator(".computed")
            size = tuple(int(n) for n in computed.get_attribute("data-size").split(","))
            assert size == layer.output_shape[:2] == returned.activations.shape[1:3]
            assert row.locator(".metadata").inner_text() == "×".join(map(str, layer.output_shape))
            # The arithmetic is written with the layer's own numbers.
            kernel, dilation = layer.kernel_size[0], layer.dilation_rate[0]
            written = computed.inner_text()
            assert f"({layer.input_shape[0]} − " in written and written.endswith(f"= {size[0]}")
            assert (f"({kernel} − 1)·{dilation}" if dilation > 1 else f" {kernel} + ") in written


def receptive_field(layers: list[Layer], index: int, row: int, col: int) -> tuple[int, ...]:
    """(top, bottom, left, right) of the input a unit of layers[index] sees, unclipped."""
    top, bottom, left, right = row, row, col, col
    for layer in reversed(layers[: index + 1]):
        if not layer.kernel_size:
            continue
        (kh, kw), (sh, sw) = layer.kernel_size, layer.strides
        dh, dw = layer.dilation_rate
        pad_top, _, pad_left, _ = layer.padding_amount
        top, bottom = top * sh - pad_top, bottom * sh - pad_top + (kh - 1) * dh
        left, right = left * sw - pad_left, right * sw - pad_left + (kw - 1) * dw
    return top, bottom, left, right


def test_a_clicked_unit_shows_its_value_and_its_receptive_field(server, open_page) -> None:
    """The last conv of `layers` (after a strided conv and a pooling layer, dilation 2): the
    outline is the field computed from the layer chain, and the server agrees — pixels
    outside it do not change the unit, pixels inside do."""
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    page = open_page(server)
    pane = look(page, "layers", png(image))
    with Client(server.target) as client:
        info = client.metadata(model="layers")
    layers = list(info.layers)
    index = max(i for i, layer in enumerate(layers) if layer.type == "Conv2D")
    target = layers[index]
    pane.locator(".layer-select").select_option(target.name)
    pane.locator(".pre").check()
    height, width, _ = target.output_shape
    row, col = height - 1, width // 2
    zoom = pane.locator(".zoom")
    page.page.wait_for_function("([c, w]) => c.width === w", arg=[zoom.element_handle(), width])
    box = zoom.bounding_box()
    zoom.click(position={"x": (col + 0.5) * box["width"] / width,
                         "y": (row + 0.5) * box["height"] / height})  # fmt: skip
    outline = pane.locator(".rf")
    assert outline.is_visible()
    shown = tuple(int(outline.get_attribute(f"data-{side}")) for side in
                  ("top", "bottom", "left", "right"))  # fmt: skip
    top, bottom, left, right = receptive_field(layers, index, row, col)
    expected = (max(top, 0), min(bottom, 27), max(left, 0), min(right, 27))
    assert shown == expected
    assert shown != (
        0,
        27,
        0,
        27,
    )  # a field smaller than the image: the check below means something
    text = pane.locator(".unit").inner_text()
    assert f"unit (row {row}, column {col})" in text
    assert f"rows {shown[0]}–{shown[1]} and columns {shown[2]}–{shown[3]}" in text

    inside = np.zeros((28, 28), bool)
    inside[shown[0] : shown[1] + 1, shown[2] : shown[3] + 1] = True
    outside_changed = np.where(inside, image, 255 - image).astype(np.uint8)
    inside_changed = np.where(inside, 255 - image, image).astype(np.uint8)
    with Client(server.target) as client:
        result = client.feature_map(
            np.stack([image, outside_changed, inside_changed]), model="layers",
            layer=target.name, pre_activation=True,
        )  # fmt: skip
    assert result.pre_activations is not None
    units = result.pre_activations[:, row, col, :]
    value = float(pane.locator(".unit").get_attribute("data-value"))
    assert value == pytest.approx(float(units[0, 0]), rel=1e-5, abs=1e-5)  # channel 0's value
    np.testing.assert_allclose(units[1], units[0], atol=1e-5)  # outside: no effect
    assert not np.allclose(units[2], units[0], atol=1e-3)  # inside: it sees them


def test_the_arrow_keys_move_the_unit(server, open_page, shoe: bytes) -> None:
    page = open_page(server)
    pane = page.wait_for_model()
    page.upload(shoe)
    page.wait_analysed()
    zoom = pane.locator(".zoom")
    zoom.focus()
    zoom.press("ArrowDown")
    assert "unit (row 0, column 0)" in pane.locator(".unit").inner_text()
    zoom.press("ArrowRight")
    zoom.press("ArrowRight")
    zoom.press("ArrowDown")
    assert "unit (row 1, column 2)" in pane.locator(".unit").inner_text()
    with Client(server.target) as client:
        layers = list(client.metadata(model="fashion").layers)
    top, _, left, _ = receptive_field(layers, 0, 1, 2)  # a 3×3 conv with strides 2
    assert pane.locator(".rf").get_attribute("data-top") == str(top) == "2"
    assert pane.locator(".rf").get_attribute("data-left") == str(left) == "4"


def test_kernels_are_drawn_per_filter_and_input_channel(server, open_page) -> None:
    page = open_page(server)
    pane = choose(page, "layers")
    with Client(server.target) as client:
        info = client.metadata(model="layers")
        convs = [layer for layer in info.layers if layer.type == "Conv2D"]
        for layer in convs:
            pane.locator(".layer-select").select_option(layer.name)
            kernels = client.filters(model="layers", layer=layer.name).kernels
            height, width, inputs, outputs = kernels.shape
            page.page.wait_for_function(
                "([pane, n]) => pane.querySelectorAll('.kernels canvas').length === n",
                arg=[pane.element_handle(), inputs * outputs],
            )
            groups = pane.locator(".kernels figure")
            assert groups.count() == outputs
            canvas = groups.nth(outputs - 1).locator("canvas").nth(inputs - 1)
            assert (canvas.get_attribute("width"), canvas.get_attribute("height")) == (
                str(width), str(height),
            )  # fmt: skip
    pooling = next(layer for layer in info.layers if layer.type == "MaxPooling2D")
    pane.locator(".layer-select").select_option(pooling.name)
    assert "has no kernels" in pane.locator(".kernels-note").inner_text()


def test_three_explanations_side_by_side_for_the_top_class_or_a_chosen_one(
    server, open_page, test_images: Dataset
) -> None:
    image = test_images.images[4]
    page = open_page(server)
    pane = look(page, "cam", png(image))
    with Client(server.target) as client:
        top = client.predict(image[None], model="cam").top[0][0]
        names = client.metadata(model="cam").class_names
    captions = pane.locator(".heat figcaption").all_inner_texts()
    assert [c.split(" for ")[0] for c in captions] == ["Grad-CAM", "HiResCAM", "Occlusion"]
    assert all(f" for {top.name}" in caption for caption in captions)
    for canvas in pane.locator(".heat canvas").all():
        assert page.colours(canvas)["distinct"] > 1
    other = (top.index + 1) % len(names)
    pane.locator(".class-select").select_option(str(other))
    page.page.wait_for_function(
        "([pane, name]) => [...pane.querySelectorAll('.heat figcaption')]"
        ".every((c) => c.textContent.includes(' for ' + name))",
        arg=[pane.element_handle(), names[other]],
    )


def test_compare_two_models_side_by_side(server, open_page, shoe: bytes) -> None:
    page = open_page(server)
    page.wait_for_model()
    page.upload(shoe)
    page.wait_analysed()
    page.page.locator("#compare").check()
    second = choose(page, "cam", 1)
    page.wait_analysed(1)
    assert page.page.locator(".pane").count() == 2
    with Client(server.target) as client:
        for index, model in enumerate(("fashion", "cam")):
            expected = client.predict([shoe], model=model, top_k=10).probabilities[0]
            shown = list(probabilities(page.pane(index)).values())
            np.testing.assert_allclose(shown, expected, atol=1e-6)
    assert second.locator(".summary").inner_text().startswith("cam version 1")
    page.page.locator("#compare").uncheck()
    assert page.page.locator(".pane").count() == 1


def test_each_panel_shows_its_call_as_curl_that_gives_the_same_answer(
    server, open_page, shoe: bytes
) -> None:
    page = open_page(server)
    pane = page.wait_for_model()
    page.upload(shoe)
    page.wait_analysed()
    section = pane.locator('[data-panel="predict"]')
    section.locator(".call summary").click()
    timing = section.locator(".timing").inner_text()
    assert re.match(r"Predict: the server took \d+\.\d ms \(round trip \d+\.\d ms\)", timing)
    command = section.locator(".curl").inner_text()
    assert command.startswith(f"curl http://127.0.0.1:{server.server.http_port}/convserve.v1.")
    answer = subprocess.run(["bash", "-c", command + " -s"], capture_output=True, text=True,
                            timeout=30, check=True).stdout  # fmt: skip
    assert '"predictions"' in answer
    with Client(server.target) as client:
        top = client.predict([shoe]).top[0][0].name
    assert f'"name": "{top}"' in answer or f'"name":"{top}"' in answer


def test_a_drawing_is_predicted(server, open_page) -> None:
    page = open_page(server)
    page.wait_for_model()
    pad = page.page.locator("#draw")
    box = pad.bounding_box()
    mouse = page.page.mouse
    mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.2)
    mouse.down()
    mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.8, steps=8)
    mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.8, steps=8)
    mouse.up()
    pane = page.wait_analysed()
    assert page.page.locator("#sent-caption").inner_text().startswith("Sent: the drawing")
    seen = page.colours(pane.locator("canvas.seen"))
    assert seen["pixels"] == 28 * 28 and seen["distinct"] > 2  # the strokes, resized to 28×28


def test_a_dropped_file_is_used(server, open_page, shoe: bytes) -> None:
    page = open_page(server)
    page.wait_for_model()
    page.page.evaluate(
        """(bytes) => {
            const data = new DataTransfer();
            data.items.add(new File([new Uint8Array(bytes)], "dropped.png", {type: "image/png"}));
            document.querySelector("#drop").dispatchEvent(
                new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
        }""",
        list(shoe),
    )
    page.wait_analysed()
    assert page.page.locator("#sent-caption").inner_text().startswith("Sent: dropped.png")


def test_a_non_image_upload_shows_an_error_in_words_and_the_page_goes_on(
    server, open_page, shoe: bytes
) -> None:
    page = open_page(server)
    page.wait_for_model()
    page.upload(b"shopping list: milk, eggs\n", "notes.txt", "text/plain")
    error = page.page.locator("#input-error")
    error.wait_for()
    page.page.wait_for_function("() => document.querySelector('#input-error').textContent")
    assert error.inner_text().startswith("notes.txt: The server could not use this: image 0:")
    assert "PNG or JPEG" in error.inner_text()
    assert page.pane().locator('[data-panel="predict"] .error').inner_text() != ""
    page.upload(shoe, "shoe.png")
    page.wait_analysed()
    assert error.inner_text() == ""


@contextlib.contextmanager
def own_settings(models_dir: Path, **changes: Any) -> Iterator[RunningServer]:
    from service.settings import Settings

    changes = {"default_model": "fashion", **changes}
    settings = Settings(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=-1,
                        models_dir=models_dir, **changes)  # fmt: skip
    with serving(settings) as running:
        yield running


def test_too_large_an_image_is_said_in_words(models_dir: Path, open_page) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    with own_settings(models_dir, max_message_bytes=64 * 1024) as small:
        page = open_page(small)
        page.wait_for_model()
        page.upload(png(noise), "photo.png")
        error = page.page.locator("#input-error")
        page.page.wait_for_function("() => document.querySelector('#input-error').textContent")
        assert error.inner_text().startswith("photo.png: Too large for this server:")
        assert "65536" in error.inner_text()


def test_an_unknown_model_and_a_server_gone_are_said_in_words(
    models_dir: Path, open_page, shoe: bytes
) -> None:
    with contextlib.ExitStack() as stack:
        running = stack.enter_context(own_settings(models_dir))
        page = open_page(running)
        pane = choose(page, "cam")
        with Client(running.target) as client:
            client.unload_model("cam")
        page.upload(shoe)
        error = pane.locator('[data-panel="predict"] .error')
        error.wait_for()
        assert error.inner_text().startswith("Not found: ")
        assert "'cam'" in error.inner_text()
        stack.close()  # the server stops
        page.upload(shoe, "again.png")
        status = page.page.locator("#server-status")
        page.page.wait_for_function(
            "() => document.querySelector('#server-status').textContent.includes('does not answer')"
        )
        assert "is convserve still running?" in status.inner_text()


def test_a_token_is_asked_for_and_used(models_dir: Path, open_page, tmp_path: Path) -> None:
    token = "explorer-token-of-the-operator"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{token}:admin\n")
    with own_settings(models_dir, auth_tokens_file=tokens) as guarded:
        page = open_page(guarded)
        form = page.page.locator("#token-form")
        form.wait_for()
        assert "needs a token" in page.page.locator("#server-status").inner_text()
        page.page.locator("#token").fill(token)
        page.page.locator("#token-form button").click()
        pane = page.wait_for_model()
        assert pane.locator(".model-select").input_value() == "fashion"
        assert form.is_hidden()


def test_an_rgb_folder_model_and_an_imported_onnx_model(own, own_server, open_page) -> None:
    """The folder model takes 32×32 RGB; the ONNX model 20×24 RGB in NCHW, with no gradient
    graph: occlusion explains it, the gradient methods say why they cannot."""
    from tests.own_models import EASY

    photo = (own["folder"] / EASY[1] / "0.png").read_bytes()  # 32×32 RGB
    page = open_page(own_server)
    pane = page.wait_for_model()
    assert not page.page.locator("#pad").is_visible()  # no drawing for RGB models
    page.upload(photo, "bag.png")
    page.wait_analysed()
    with Client(own_server.target) as client:
        for model, side in (("folder", (32, 32)), ("onnx", (20, 24))):
            pane = choose(page, model)
            page.wait_analysed()
            expected = client.predict([photo], model=model, top_k=3)
            assert (
                pane.locator(".bars li.top").get_attribute("data-class") == expected.top[0][0].name
            )
            seen = pane.locator("canvas.seen")
            assert (int(seen.get_attribute("height")), int(seen.get_attribute("width"))) == side
            assert page.colours(seen)["distinct"] > 3  # colour, as the server decoded it
            info = client.metadata(model=model)
            first = next(layer for layer in info.layers if layer.type == "Conv2D")
            assert pane.locator(".channels canvas").count() == first.output_shape[-1]
            zoom = pane.locator(".zoom")
            zoom.focus()
            zoom.press("ArrowDown")
            assert pane.locator(".rf").is_visible()
    captions = pane.locator(".heat figcaption").all_inner_texts()  # the ONNX model's
    assert captions[2].startswith("Occlusion for ")
    for caption, method in zip(captions[:2], ("Grad-CAM", "HiResCAM"), strict=True):
        assert caption.startswith(f"{method}: The server could not use this: ")
        assert "method occlusion, which works on any model" in caption


@pytest.mark.parametrize("width", [PHONE["width"], 320])  # a common phone, the narrowest
def test_usable_at_phone_width(server, open_page, shoe: bytes, width: int) -> None:
    page = open_page(server, viewport={"width": width, "height": 800})
    choose(page, "layers")
    page.upload(shoe)
    page.wait_analysed()
    overflow = page.page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0  # no sideways scrolling of the page (wide tables scroll in place)
    for name in ("model", "seen", "predict", "featuremap", "filters", "explain"):
        box = page.pane().locator(f'[data-panel="{name}"]').bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= width + 1, name


def test_a_pasted_image_is_used(server, open_page, shoe: bytes) -> None:
    page = open_page(server)
    page.wait_for_model()
    page.page.evaluate(
        """(bytes) => {
            const data = new DataTransfer();
            data.items.add(new File([new Uint8Array(bytes)], "x.png", {type: "image/png"}));
            document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: data}));
        }""",
        list(shoe),
    )
    page.wait_analysed()
    assert page.page.locator("#sent-caption").inner_text().startswith("Sent: the pasted image")


def test_keyboard_and_screen_reader_usable(server, open_page, shoe: bytes) -> None:
    """Tab goes through the controls in reading order; every control, picture and canvas
    has a name a screen reader reads out."""
    page = open_page(server)
    page.wait_for_model()
    page.upload(shoe)
    page.wait_analysed()
    order = []
    for _ in range(9):
        page.page.keyboard.press("Tab")
        order.append(
            page.page.evaluate(
                """() => { const e = document.activeElement;
                    return e.id || e.className || e.tagName.toLowerCase(); }"""
            )
        )
    assert order == [
        "file", "draw", "clear", "use-drawing", "compare", "model-select", "version-select",
        "summary", "scroll",  # the layers table, which scrolls sideways on a phone
    ]  # fmt: skip
    unnamed = page.page.evaluate(
        """() => [...document.querySelectorAll(
                'select, input, button, canvas, img, [tabindex]')]
            .filter((e) => e.offsetParent !== null || e.id === 'file')
            .filter((e) => !(e.getAttribute('aria-label') || e.alt
                || (e.labels && [...e.labels].some((l) => l.textContent.trim()))
                || (e.tagName === 'BUTTON' && e.textContent.trim())))
            .map((e) => e.outerHTML.slice(0, 80))"""
    )
    assert unnamed == []
    headings = page.page.locator("h1, h2, h3").all_inner_texts()
    assert headings[:3] == ["convserve explorer", "Image", "Model"]
    assert {"Prediction", "Feature maps", "Kernels", "Explanations"} <= set(headings)


def test_compare_two_versions_of_a_model(models_dir: Path, open_page, tmp_path: Path) -> None:
    """With two versions served, Compare puts the one before the latest beside it."""
    import shutil

    for version in (1, 2):  # the same model, published twice
        copy = shutil.copytree(models_dir / "layers" / "1", tmp_path / "layers" / str(version))
        metadata = json.loads((copy / "metadata.json").read_text())
        (copy / "metadata.json").write_text(json.dumps({**metadata, "version": version}))
    image = png(np.random.default_rng(5).integers(0, 256, (28, 28), dtype=np.uint8))
    with own_settings(tmp_path, default_model="layers", version_policy="all") as running:
        page = open_page(running)
        page.wait_for_model()
        page.page.locator("#compare").check()
        page.wait_for_model(1)
        page.upload(image)
        for index, version in ((0, 2), (1, 1)):
            pane = page.wait_analysed(index)
            assert pane.locator(".summary").inner_text().startswith(f"layers version {version} ")
            with Client(running.target) as client:
                expected = client.predict([image], version=version, top_k=10).probabilities[0]
            np.testing.assert_allclose(list(probabilities(pane).values()), expected, atol=1e-6)
