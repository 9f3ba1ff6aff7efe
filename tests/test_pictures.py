"""The pictures' captions and files, without a server: arrays in, PNGs out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from convserve.artifact import Layer
from convserve.pictures import explain_png, feature_map_png, filters_png, layer_caption

# conv2d_1 of a stack: 14x14x6 → 7x7x8 with "same" padding, stride 2 and a 5x5 kernel.
CONV = Layer(
    name="conv2d_1", type="Conv2D", input_shape=(14, 14, 6), output_shape=(7, 7, 8),
    parameters=1208, filters=8, kernel_size=(5, 5), strides=(2, 2), padding="same",
    padding_amount=(1, 2, 1, 2), dilation_rate=(1, 1), activation="relu",
)  # fmt: skip


def test_conv_caption_has_its_parameters_and_the_output_size_formula() -> None:
    lines = layer_caption(CONV).splitlines()
    assert lines == [
        "conv2d_1 Conv2D: 14x14x6 → 7x7x8, 8 filters, relu",
        "kernel 5x5, strides 2x2, dilation 1x1, padding same [1, 2, 1, 2] "
        "(top, bottom, left, right)",
        "O = ⌊(I − K_eff + 2P) / S⌋ + 1 = ⌊(14 − 5 + 3) / 2⌋ + 1 = 7",
    ]
    pool = Layer("max_pooling2d", "MaxPooling2D", (26, 26, 4), (13, 13, 4), 0)
    assert layer_caption(pool) == "max_pooling2d MaxPooling2D: 26x26x4 → 13x13x4"


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG"
        return image.size


def test_each_picture_is_a_png_of_the_size_it_reports(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sizes = {
        "features": feature_map_png(tmp_path / "features.png", rng.random((7, 7, 8)), CONV, "x"),
        "explain": explain_png(
            tmp_path / "explain.png",
            rng.integers(0, 256, (5, 28, 28)),
            rng.random((5, 28, 28)),
            [0, 1, 2, 0, 1],
            rng.random((5, 3)),
            ("a", "b", "c"),
            CONV,
            "gradcam",
        ),
        "filters": filters_png(tmp_path / "filters.png", rng.normal(size=(5, 5, 6, 8)), None, CONV),
    }
    for name, size in sizes.items():
        assert _png_size(tmp_path / f"{name}.png") == size
    # 8 channels in a 3x3 grid; 5 images in 2 rows of 3; 6 input rows by 8 filters.
    assert sizes["filters"][0] > sizes["filters"][1] and sizes["explain"][0] > 400


def test_many_channels_are_capped(tmp_path: Path) -> None:
    values = np.zeros((4, 4, 200), np.float32)  # all zero: still drawn, on a flat scale
    wide = feature_map_png(tmp_path / "wide.png", values, CONV, "activations")
    assert _png_size(tmp_path / "wide.png") == wide
