"""The numpy runtime computes what Keras computes, for every kind of layer the trainer builds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.errors import ModelLoadError
from service.model import Model
from service.runtime import CHUNK_IMAGES, NumpyRuntime, Unsupported
from training.model import PRESETS, ConvLayer, ModelConfig, build_model
from training.train import describe_layers


def _randomized(config: ModelConfig, seed: int = 0):  # type: ignore[no-untyped-def]
    """A built model with random weights (positive variances for batch norm)."""
    rng = np.random.default_rng(seed)
    model = build_model(config, n_classes=10)
    for layer in model.layers:
        weights = [
            np.abs(rng.normal(size=v.shape)) + 0.1
            if "variance" in v.path
            else rng.normal(size=v.shape) * 0.3
            for v in layer.weights
        ]
        layer.set_weights([w.astype(np.float32) for w in weights])
    return model


def _stack(*specs: str, **options: object) -> ModelConfig:
    return ModelConfig(conv=tuple(map(ConvLayer.parse, specs)), **options)  # type: ignore[arg-type]


CONFIGS = {
    "seed": PRESETS["seed"].model,
    "deep": PRESETS["deep"].model,  # same padding, dilation, batch norm, pooling, dropout, dense
    "strided": _stack("4:3:same", "4:3:valid:2,pool=2", "3:2:valid:1:2:tanh"),
    "activations": _stack(
        "6:5:same:3:1:elu,bn", "6:3:same:1:1:selu", "4:2:valid:1:1:sigmoid", "4:1:valid:1:1:relu6",
        head="global_avg", dense_units=12,
    ),
    "more": _stack("5:4:same:1:1:silu", "3:3:same:2:1:softplus", "3:3:valid:1:1:leaky_relu"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_numpy_runtime_matches_keras(name: str) -> None:
    model = _randomized(CONFIGS[name])
    runtime = NumpyRuntime.compile(model, 1 / 255, 0.0, tuple(describe_layers(model)))
    pixels = (np.random.default_rng(1).random((CHUNK_IMAGES + 3, 28, 28, 1)) * 255).astype(
        np.float32
    )
    expected = np.asarray(model(pixels / 255, training=False))
    actual = runtime.predict(pixels)
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, atol=1e-5)
    np.testing.assert_allclose(runtime.predict(pixels[:1]), expected[:1], atol=1e-5)


def test_unsupported_layers_are_named() -> None:
    model = _randomized(ModelConfig(conv=(ConvLayer(4, 3, activation="gelu"),)))
    with pytest.raises(Unsupported, match="conv2d: activation 'gelu'"):
        NumpyRuntime.compile(model, 1 / 255, 0.0, tuple(describe_layers(model)))


@pytest.mark.integration
def test_auto_falls_back_to_tensorflow_and_numpy_refuses(tmp_path: Path) -> None:
    from training.train import train

    config = PRESETS["small"].replace(
        model=ModelConfig(conv=(ConvLayer(2, 3, strides=2, activation="gelu"),)),
        train_limit=200,
        test_limit=100,
    )
    path, _ = train(config, name="gelu", models_dir=tmp_path, verbose=0)
    model = Model.load(path)
    assert model.runtime == "tensorflow"
    pixels = np.zeros((2, 28, 28, 1), np.float32)
    np.testing.assert_array_equal(model.predict(pixels), model.predict_tensorflow(pixels))
    with pytest.raises(
        ModelLoadError, match="numpy runtime cannot run it: conv2d: activation 'gelu'"
    ):
        Model.load(path, runtime="numpy")


def test_served_runtimes_agree(models_dir: Path, test_images) -> None:  # type: ignore[no-untyped-def]
    model = Model.load(models_dir / "layers" / "1")
    assert model.runtime == "numpy"
    pixels = test_images.images[:300, :, :, None].astype(np.float32)
    np.testing.assert_allclose(model.predict(pixels), model.predict_tensorflow(pixels), atol=1e-5)
