"""Training on slices of the real data and the exported artifact the server will load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from convserve import fashion_mnist
from convserve.artifact import ArtifactError, Layer, sha256_file
from training import publish, train
from training.layers import describe_layers
from training.model import PRESETS, ConfigError, ConvLayer, ModelConfig
from training.reference import conv2d

pytestmark = pytest.mark.integration  # every test here trains

# A tiny model on a slice of the data: seconds, not minutes.
SMALL = PRESETS["small"].replace(train_limit=2000, test_limit=500)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, train.TrainResult]:
    models_dir = tmp_path_factory.mktemp("models")
    config = SMALL.replace(classes=("Trouser", "Bag", "Sneaker"))
    return publish.train(config, name="fashion", models_dir=models_dir, verbose=0)


def test_export_writes_a_versioned_artifact(exported: tuple[Path, train.TrainResult]) -> None:
    path, _ = exported
    assert path.name == "1" and path.parent.name == "fashion"
    assert sorted(p.name for p in path.iterdir()) == [
        "explain.onnx", "features.onnx", "filters.npz", "metadata.json", "model.keras",
        "model.onnx", "report",
    ]  # fmt: skip
    assert [p.name for p in path.parent.iterdir()] == ["1"]  # no staging dir left behind


def test_metadata_describes_the_model(exported: tuple[Path, train.TrainResult]) -> None:
    path, result = exported
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["name"] == "fashion" and meta["version"] == 1
    assert meta["classes"] == ["Trouser", "Bag", "Sneaker"]
    assert meta["input"] == {"name": "images", "shape": [28, 28, 1], "dtype": "float32"}
    assert meta["preprocessing"]["scale"] == pytest.approx(1 / 255)
    assert meta["training"]["config"]["classes"] == ["Trouser", "Bag", "Sneaker"]
    assert meta["training"]["seed"] == SMALL.seed
    assert meta["evaluation"]["test_accuracy"] == result.test_accuracy
    assert meta["evaluation"]["test_examples"] == 500
    assert meta["parameters"] == result.model.count_params()
    assert meta["framework"]["tensorflow"] and meta["framework"]["keras"]
    assert meta["framework"]["tf2onnx"] and meta["framework"]["onnxruntime"]
    for entry in meta["files"]:
        assert entry["sha256"] == sha256_file(path / entry["path"])
    conv = meta["layers"][0]
    assert conv == conv | {
        "name": "conv2d", "type": "Conv2D", "filters": 4, "kernel_size": [3, 3], "strides": [2, 2],
        "padding": "valid", "padding_amount": [[0, 0], [0, 0]], "dilation_rate": [1, 1],
        "activation": "relu", "input_shape": [28, 28, 1], "output_shape": [13, 13, 4],
    }  # fmt: skip
    assert meta["layers"][-1]["output_shape"] == [3]


def test_three_easy_classes_are_learned(exported: tuple[Path, train.TrainResult]) -> None:
    # Trousers, bags and sneakers look nothing alike: even a tiny model separates them.
    _, result = exported
    assert result.test_accuracy > 0.9


def test_reloaded_artifact_predicts_like_the_trained_model(
    exported: tuple[Path, train.TrainResult],
) -> None:
    import keras

    path, result = exported
    images = train.preprocess(
        fashion_mnist.load("test", classes=result.class_names, limit=64).images
    )
    reloaded = keras.models.load_model(path / "model.keras", compile=False)
    np.testing.assert_allclose(
        reloaded.predict(images, verbose=0), result.model.predict(images, verbose=0), atol=1e-6
    )


def test_first_conv_layer_computes_the_reference_convolution(
    exported: tuple[Path, train.TrainResult],
) -> None:
    import keras

    _, result = exported
    images = train.preprocess(fashion_mnist.load("test", limit=8).images)
    conv = result.model.get_layer("conv2d")
    kernel, bias = conv.get_weights()
    activations = keras.Model(result.model.input, conv.output).predict(images, verbose=0)
    expected = np.maximum(conv2d(images, kernel, bias, strides=2), 0)
    np.testing.assert_allclose(activations, expected, atol=1e-5)


def test_versions_increase(tmp_path: Path) -> None:
    result = train.fit(SMALL.replace(train_limit=200, test_limit=100), verbose=0)
    first = publish.export(result, tmp_path, "m")
    second = publish.export(result, tmp_path, "m")
    assert (first.name, second.name) == ("1", "2")


def test_same_seed_same_accuracy() -> None:
    config = SMALL.replace(train_limit=1000, seed=3)
    first, second = train.fit(config, verbose=0), train.fit(config, verbose=0)
    assert first.test_accuracy == second.test_accuracy
    np.testing.assert_array_equal(first.model.get_weights()[0], second.model.get_weights()[0])


def test_failed_export_leaves_no_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = train.fit(SMALL.replace(train_limit=200, test_limit=100), verbose=0)

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(publish, "build_metadata", crash)
    with pytest.raises(OSError, match="disk full"):
        publish.export(result, tmp_path, "m")
    assert not (tmp_path / "m").exists()  # not even the model's folder, which it created


def test_bad_model_name_is_rejected_before_training(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"model name '\.\./x'"):
        publish.train(SMALL, name="../x", models_dir=tmp_path)


def test_padding_and_dilation_are_recorded(tmp_path: Path) -> None:
    stack = (ConvLayer(2, 4, padding="same"), ConvLayer(2, 3, dilation_rate=2))
    config = SMALL.replace(train_limit=200, test_limit=100, model=ModelConfig(conv=stack))
    layers = describe_layers(train.fit(config, verbose=0).model)
    assert layers[0].padding_amount == (1, 2, 1, 2) and layers[0].output_shape == (28, 28, 2)
    assert layers[1].dilation_rate == (2, 2) and layers[1].output_shape == (24, 24, 2)


def test_pooling_windows_are_recorded() -> None:
    """MaxPooling2D and AveragePooling2D carry their window, as a conv does, through
    metadata.json and the wire: what a receptive field is followed through."""
    import keras

    from convserve.api.codec import from_layer_message, layer_message

    inputs = keras.Input((28, 26, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)  # 26x24
    x = keras.layers.MaxPooling2D(2, name="max_pooling2d")(x)  # 13x12
    average = keras.layers.AveragePooling2D(
        pool_size=3, strides=2, padding="same", name="average_pooling2d"
    )
    x = average(x)  # 7x6
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(x))
    _, max_pool, average_pool, flatten, _ = describe_layers(keras.Model(inputs, outputs))
    assert max_pool == Layer(
        "max_pooling2d", "MaxPooling2D", (26, 24, 4), (13, 12, 4), 0, kernel_size=(2, 2),
        strides=(2, 2), padding="valid", padding_amount=(0, 0, 0, 0), dilation_rate=(1, 1),
    )  # fmt: skip
    assert average_pool == Layer(
        "average_pooling2d", "AveragePooling2D", (13, 12, 4), (7, 6, 4), 0, kernel_size=(3, 3),
        strides=(2, 2), padding="same", padding_amount=(1, 1, 0, 1), dilation_rate=(1, 1),
    )  # fmt: skip
    assert average_pool.to_dict() == {
        "name": "average_pooling2d", "type": "AveragePooling2D", "input_shape": [13, 12, 4],
        "output_shape": [7, 6, 4], "parameters": 0, "kernel_size": [3, 3], "strides": [2, 2],
        "padding": "same", "padding_amount": [[1, 1], [0, 1]], "dilation_rate": [1, 1],
    }  # fmt: skip
    assert max_pool.describe() == (
        "max_pooling2d MaxPooling2D 26x24x4 → 13x12x4, pool 2x2, strides 2x2, "
        "padding valid [0, 0, 0, 0]"
    )
    for layer in (max_pool, average_pool, flatten):
        assert Layer.from_dict(layer.to_dict(), "metadata.json: layers") == layer
        assert from_layer_message(layer_message(layer)) == layer
    assert not flatten.has_window


def test_evaluation_report(exported: tuple[Path, train.TrainResult]) -> None:
    from PIL import Image

    path, result = exported
    report = path / "report"
    sizes = {}
    for name in ("confusion_matrix.png", "misclassified.png", "learning_curve.png"):
        with Image.open(report / name) as image:
            image.verify()  # a whole, valid PNG
            sizes[name] = image.size
    assert sizes["confusion_matrix.png"][0] > 300 and sizes["learning_curve.png"][0] > 800
    evaluation = json.loads((path / "metadata.json").read_text())["evaluation"]
    confusion = np.array(evaluation["confusion_matrix"])
    assert confusion.shape == (3, 3) and confusion.sum() == 500
    assert np.trace(confusion) / 500 == pytest.approx(result.test_accuracy)
    trousers = evaluation["per_class"][0]
    assert trousers["class"] == "Trouser" and trousers["support"] == confusion[0].sum()
    assert trousers["recall"] == pytest.approx(confusion[0, 0] / confusion[0].sum(), abs=1e-4)
    assert trousers["precision"] == pytest.approx(confusion[0, 0] / confusion[:, 0].sum(), abs=1e-4)
    card = (report / "model_card.md").read_text()
    assert f"test accuracy {result.test_accuracy:.4f}" in card
    assert "| Trouser |" in card and "## Intended use and limits" in card


def test_one_cycle_schedule_warms_up_then_decays_to_zero() -> None:
    config = SMALL.replace(train_limit=1000, test_limit=100, epochs=3, schedule="one_cycle",
                           learning_rate=0.01)  # fmt: skip
    result = train.fit(config, verbose=0)
    first, middle, last = result.history["learning_rate"]
    assert first == pytest.approx(0.01, rel=1e-3)  # the warm-up's end: the peak
    assert 0.004 < middle < 0.006  # about half-way down the cosine
    assert last < 1e-4


def test_time_budget_cuts_the_epochs() -> None:
    config = SMALL.replace(train_limit=1000, test_limit=100, epochs=50, max_minutes=1e-4)
    result = train.fit(config, verbose=0)
    assert result.epochs_run == 1
    assert result.stopped.startswith("time budget: 0.0001 min fit 1 of 50 epochs")


def test_early_stopping_keeps_the_best_epoch() -> None:
    # A rate far too high diverges: validation accuracy peaks early, then training stops.
    config = SMALL.replace(train_limit=1000, test_limit=100, epochs=30, patience=2,
                           learning_rate=1.0)  # fmt: skip
    result = train.fit(config, verbose=0)
    accuracy = result.history["val_accuracy"]
    assert result.epochs_run == len(accuracy) < 30
    assert result.stopped.startswith("early stopping")
    assert result.best_epoch == 1 + int(np.argmax(accuracy))


def test_augmented_training_is_reproducible() -> None:
    config = SMALL.replace(train_limit=600, test_limit=100, flip=True, shift=0.1, seed=5)
    first, second = train.fit(config, verbose=0), train.fit(config, verbose=0)
    np.testing.assert_array_equal(first.model.get_weights()[0], second.model.get_weights()[0])
    plain = train.fit(config.replace(flip=False, shift=0.0), verbose=0)
    assert not np.array_equal(first.model.get_weights()[0], plain.model.get_weights()[0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schedule": "linear"}, "unknown schedule 'linear'; expected one of constant, one_cycle"),
        ({"shift": 0.6}, r"shift must be in \[0, 0.5\)"),
        ({"validation_split": 1.0}, r"validation_split must be in \[0, 1\)"),
        ({"epochs": 0}, "training: epochs must be positive"),
    ],
)
def test_bad_fit_settings_are_refused_before_loading(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        train.fit(SMALL.replace(**change), data_dir="/nonexistent")


def test_early_stopping_waits_for_the_one_cycle_rate_to_come_down() -> None:
    # The same diverging rate under one_cycle: nothing counts before epoch 4 of 8.
    config = SMALL.replace(train_limit=1000, test_limit=100, epochs=8, patience=1,
                           learning_rate=1.0, schedule="one_cycle")  # fmt: skip
    result = train.fit(config, verbose=0)
    assert result.epochs_run >= 5 and result.best_epoch >= 5
