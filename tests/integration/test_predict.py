"""Predict over real sockets: the server answers exactly what the artifact computes in-process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from client import AsyncClient, Client
from convserve.fashion_mnist import Dataset
from training.train import preprocess


@pytest.fixture(scope="module")
def keras_probabilities(models_dir: Path, test_images: Dataset) -> np.ndarray:
    import keras

    model = keras.models.load_model(models_dir / "fashion" / "1" / "model.keras", compile=False)
    return np.asarray(model.predict(preprocess(test_images.images), batch_size=1000, verbose=0))


def test_all_test_images_match_keras(
    server, test_images: Dataset, keras_probabilities: np.ndarray
) -> None:
    with Client(server.target) as client:
        results = [client.predict(test_images.images[i : i + 2000]) for i in range(0, 10_000, 2000)]
    probabilities = np.concatenate([r.probabilities for r in results])
    np.testing.assert_allclose(probabilities, keras_probabilities, atol=1e-5)
    served_accuracy = (np.concatenate([r.labels for r in results]) == test_images.labels).mean()
    keras_accuracy = (keras_probabilities.argmax(axis=1) == test_images.labels).mean()
    assert served_accuracy == keras_accuracy > 0.6
    assert {(r.model, r.version) for r in results} == {("fashion", 1)}


def test_every_pixel_layout_gives_the_same_answer(server, test_images: Dataset) -> None:
    images = test_images.images[:16]
    with Client(server.target) as client:
        expected = client.predict(images).probabilities
        for variant in (
            images.astype(np.float32),
            images[..., None],
            images.reshape(16, 784),
            images.astype(np.int64),
        ):
            np.testing.assert_allclose(client.predict(variant).probabilities, expected, atol=1e-6)


def test_png_and_jpeg_files_are_decoded(server, test_images: Dataset, tmp_path: Path) -> None:
    import tensorflow as tf

    images = test_images.images[:3]
    gray = [tf.io.encode_png(image[..., None]).numpy() for image in images]
    rgb = [tf.io.encode_png(np.repeat(image[..., None], 3, axis=2)).numpy() for image in images]
    jpeg = tf.io.encode_jpeg(images[0][..., None], quality=100).numpy()
    path = tmp_path / "first.png"
    path.write_bytes(gray[0])
    with Client(server.target) as client:
        expected = client.predict(images).probabilities
        np.testing.assert_allclose(client.predict(gray).probabilities, expected, atol=1e-6)
        np.testing.assert_allclose(client.predict(rgb).probabilities, expected, atol=1e-6)
        np.testing.assert_allclose(client.predict([path]).probabilities, expected[:1], atol=1e-6)
        assert client.predict([jpeg]).labels[0] == expected[0].argmax()


def test_top_k_lists_the_best_classes_in_order(server, test_images: Dataset) -> None:
    with Client(server.target) as client:
        result = client.predict(test_images.images[:4], top_k=5)
        everything = client.predict(test_images.images[:1], top_k=50)
        default = client.predict(test_images.images[:1])
    assert result.class_names[9] == "Ankle boot"
    for row, top in zip(result.probabilities, result.top, strict=True):
        assert [s.index for s in top] == np.argsort(-row, kind="stable")[:5].tolist()
        assert [s.name for s in top] == [result.class_names[s.index] for s in top]
        np.testing.assert_allclose([s.score for s in top], np.sort(row)[::-1][:5], rtol=1e-6)
    assert len(everything.top[0]) == 10 and len(default.top[0]) == 3
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1, atol=1e-5)


def test_a_client_without_retries_works(server) -> None:
    with Client(server.target, retries=0, timeout=10) as client:
        assert client.health() == "SERVING"


def test_model_and_version_can_be_named(server, test_images: Dataset) -> None:
    with Client(server.target) as client:
        pinned = client.predict(test_images.images[:2], model="layers", version=1)
        latest = client.predict(test_images.images[:2], model="layers")
    assert (pinned.model, pinned.version) == ("layers", 1)
    np.testing.assert_array_equal(pinned.probabilities, latest.probabilities)


async def test_concurrent_requests_get_their_own_answers(server, test_images: Dataset) -> None:
    images = test_images.images[:96]
    async with AsyncClient(server.target) as client:
        expected = (await client.predict(images)).probabilities
        results = await asyncio.gather(*(client.predict(image[None]) for image in images))
    for index, result in enumerate(results):
        np.testing.assert_allclose(result.probabilities[0], expected[index], atol=1e-6)


def test_metadata_and_list_models(server) -> None:
    with Client(server.target) as client:
        info = client.metadata()
        layers = client.metadata("layers", 1)
        models = client.list_models()
    assert (info.name, info.version, info.versions) == ("fashion", 1, (1,))
    assert len(info.class_names) == 10 and info.input_shape == (28, 28, 1)
    assert info.preprocessing_scale == pytest.approx(1 / 255)
    assert 0.6 < info.test_accuracy <= 1 and info.parameters == info.metadata["parameters"]
    assert info.metadata["training"]["config"]["train_limit"] == 3000
    assert [layer.name for layer in layers.layers][:3] == ["conv2d", "conv2d_1", "max_pooling2d"]
    conv = layers.layers[0]
    assert (conv.padding, conv.padding_amount, conv.output_shape) == (
        "same",
        (1, 1, 1, 1),
        (28, 28, 4),
    )
    assert [(m.name, m.versions, m.is_default) for m in models] == [
        ("cam", (1,), False),
        ("fashion", (1,), True),
        ("layers", (1,), False),
    ]
