"""FeatureMap over real sockets equals the course's convolution computed from the saved weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client import Client
from client.errors import InvalidArgument, NotFound
from convserve.fashion_mnist import Dataset
from training.reference import conv2d


@pytest.fixture(scope="module")
def weights(models_dir: Path) -> dict[str, list[np.ndarray]]:
    import keras

    model = keras.models.load_model(models_dir / "layers" / "1" / "model.keras", compile=False)
    return {layer.name: layer.get_weights() for layer in model.layers}


def test_each_conv_layer_equals_the_reference(server, test_images: Dataset, weights) -> None:
    images = test_images.images[:6]
    with Client(server.target) as client:
        # conv2d: 4 filters 3x3, padding same.
        first = client.feature_map(images, model="layers", pre_activation=True)
        x = images[..., None].astype(np.float64) / 255
        pre = conv2d(x, *weights["conv2d"], padding="same")
        np.testing.assert_allclose(first.pre_activations, pre, atol=1e-5)
        np.testing.assert_allclose(first.activations, np.maximum(pre, 0), atol=1e-5)
        assert first.layer.name == "conv2d" and first.layer.padding_amount == (1, 1, 1, 1)

        # conv2d_1: valid padding, stride 2, fed by conv2d's activations.
        second = client.feature_map(images, model="layers", layer="conv2d_1", pre_activation=True)
        pre = conv2d(first.activations, *weights["conv2d_1"], strides=2)
        np.testing.assert_allclose(second.pre_activations, pre, atol=1e-5)
        assert second.activations.shape == (6, 13, 13, 4) == (6, *second.layer.output_shape)
        assert second.layer.strides == (2, 2)

        # max_pooling2d: any 4-D layer can be asked for (it has no pre-activation).
        pooled = client.feature_map(images, model="layers", layer="max_pooling2d")
        expected_pool = second.activations[:, :12, :12].reshape(6, 6, 2, 6, 2, 4).max(axis=(2, 4))
        np.testing.assert_allclose(pooled.activations, expected_pool, atol=1e-6)
        assert pooled.pre_activations is None

        # conv2d_2: dilation 2, tanh.
        third = client.feature_map(images, model="layers", layer="conv2d_2", pre_activation=True)
        pre = conv2d(pooled.activations, *weights["conv2d_2"], dilation=2)
        np.testing.assert_allclose(third.pre_activations, pre, atol=1e-5)
        np.testing.assert_allclose(third.activations, np.tanh(pre), atol=1e-5)
        assert (third.layer.dilation_rate, third.layer.activation) == ((2, 2), "tanh")
        assert third.activations.shape == (6, 4, 4, 3)  # ((6 - 3 + 0) / 1) + 1 with K_eff = 3


def test_layer_errors(server, test_images: Dataset) -> None:
    images = test_images.images[:1]
    with Client(server.target) as client:
        with pytest.raises(
            NotFound, match="has no layer 'conv9'; layers with feature maps: conv2d, "
        ):
            client.feature_map(images, model="layers", layer="conv9")
        with pytest.raises(NotFound, match="has no 4-D output at layer 'flatten'"):
            client.feature_map(images, model="layers", layer="flatten")
        with pytest.raises(InvalidArgument, match="only Conv2D layers have a pre-activation"):
            client.feature_map(images, model="layers", layer="max_pooling2d", pre_activation=True)
        assert client.feature_map(images).layer.name == "conv2d"  # still serving


def test_include_images_returns_what_the_model_took(server, models_dir: Path) -> None:
    """A 56x40 colour PNG, as the server decoded it for the 28x28 grayscale model: the image the
    explorer page shows as "what the model sees"."""
    import io

    from PIL import Image

    from convserve import artifact, imagefiles

    rng = np.random.default_rng(3)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(buffer, format="PNG")
    preprocessing = artifact.read(models_dir / "fashion" / "1").preprocessing
    seen = imagefiles.decode(buffer.getvalue(), (28, 28, 1), preprocessing)
    with Client(server.target) as client:
        result = client.feature_map([buffer.getvalue()], include_images=True)
        assert result.images is not None and result.images.dtype == np.uint8
        np.testing.assert_array_equal(result.images, seen[None])
        assert client.feature_map([buffer.getvalue()]).images is None  # only when asked
