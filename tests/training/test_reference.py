"""The plain-numpy convolution of the course, and Keras Conv2D held to it over a grid."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from training import reference


def test_edge_detector_fires_where_the_signal_changes() -> None:
    signal = np.array([0, 0, 0, 1, 1, 1, 0, 0], dtype=float)
    edges = reference.conv1d_loop(signal, np.array([-1, 1]))
    assert edges.tolist() == [0, 0, 1, 0, 0, -1, 0]


def test_2d_loop_finds_a_vertical_edge() -> None:
    image = np.zeros((28, 28))
    image[:, 14:] = 1.0
    result = reference.conv2d_loop(image, np.array([[-1.0, 1.0]] * 2))
    assert result.shape == (27, 27)
    # Two rows of [-1, 1] see the step only at the column where it happens.
    assert np.flatnonzero(result[0]).tolist() == [13]
    assert (result[:, 13] == 2).all()


def test_vectorised_matches_the_loop_on_a_real_image() -> None:
    from convserve import fashion_mnist as data

    image = data.load("test", limit=1).images[0].astype(float) / 255
    kernel = np.random.default_rng(0).normal(size=(3, 3))
    looped = reference.conv2d_loop(image, kernel)
    vectorised = reference.conv2d(image[None, :, :, None], kernel[:, :, None, None])
    np.testing.assert_allclose(vectorised[0, :, :, 0], looped, atol=1e-12)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "dilation", "expected"),
    [
        (28, 3, 1, "valid", 1, 26),  # the seed model's conv: ((28 - 3 + 0) / 1) + 1
        (28, 3, 1, 1, 1, 28),  # P = 1 keeps the size
        (28, 3, 2, "valid", 1, 13),  # floor(25 / 2) + 1
        (28, 3, 1, "valid", 2, 24),  # K_eff = 5
        (28, 5, 3, "same", 1, 10),  # ceil(28 / 3)
        (7, 4, 1, "same", 1, 7),  # odd total padding (3): 1 before, 2 after
    ],
)
def test_output_size_formula(
    size: int, kernel: int, stride: int, padding: str | int, dilation: int, expected: int
) -> None:
    assert reference.output_size(size, kernel, stride, padding, dilation) == expected


def test_same_padding_puts_the_odd_pixel_after() -> None:
    assert reference.same_padding(7, 4) == (1, 2)
    assert reference.same_padding(28, 3, stride=2) == (0, 1)


# Every valid combination: Keras does not allow strides > 1 together with dilation > 1.
GRID = [
    (kernel, padding, stride, dilation)
    for kernel, padding, stride, dilation in itertools.product(
        range(1, 6), ("valid", "same"), range(1, 4), range(1, 4)
    )
    if stride == 1 or dilation == 1
]


@pytest.mark.parametrize(("kernel", "padding", "stride", "dilation"), GRID)
def test_keras_conv2d_matches_the_reference(
    kernel: int, padding: str, stride: int, dilation: int
) -> None:
    import keras

    rng = np.random.default_rng(kernel * 100 + stride * 10 + dilation)
    images = rng.uniform(0, 1, size=(2, 16, 15, 3)).astype(np.float32)
    layer = keras.layers.Conv2D(
        4, kernel, strides=stride, padding=padding, dilation_rate=dilation, activation="relu"
    )
    layer.build(images.shape)
    weights = rng.normal(size=(kernel, kernel, 3, 4)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    layer.set_weights([weights, bias])

    expected = reference.conv2d(
        images, weights, bias, strides=stride, padding=padding, dilation=dilation
    )
    assert expected.shape[1:3] == tuple(
        reference.output_size(size, kernel, stride, padding, dilation) for size in (16, 15)
    )
    actual = keras.ops.convert_to_numpy(layer(images))
    np.testing.assert_allclose(actual, np.maximum(expected, 0), atol=1e-5)
