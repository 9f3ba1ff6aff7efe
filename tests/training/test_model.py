"""Model configurations: the spec language, validation before training, and what Keras builds."""

from __future__ import annotations

import pytest

from training.model import (
    PRESETS,
    ConfigError,
    ConvLayer,
    ModelConfig,
    TrainConfig,
    build_model,
    infer_shapes,
)


def test_conv_spec_parses_every_knob() -> None:
    layer = ConvLayer.parse("32:5:same:2:1:tanh,bn,pool=2,dropout=0.25")
    assert layer == ConvLayer(
        filters=32, kernel_size=5, padding="same", strides=2, dilation_rate=1,
        activation="tanh", batch_norm=True, pool_size=2, dropout=0.25,
    )  # fmt: skip
    assert ConvLayer.parse("10:3") == ConvLayer(10, 3)


@pytest.mark.parametrize(
    "spec", ["10", "ten:3", "10:3:valid:1:1:relu:extra", "10:3,pool=x", "10:3,big"]
)
def test_bad_conv_spec_says_what_is_expected(spec: str) -> None:
    with pytest.raises(ConfigError, match=f"conv spec '{spec}'.*expected FILTERS:KERNEL"):
        ConvLayer.parse(spec)


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        (
            (ConvLayer(8, 3), ConvLayer(8, 29)),
            r"conv layer 2 \(conv2d_1\): kernel 29 is larger than its 26x26 input",
        ),
        ((ConvLayer(8, 3, dilation_rate=14),), r"kernel 3 \(spans 29 with dilation 14\) is larger"),
        ((ConvLayer(8, 3, strides=2, dilation_rate=2),), "strides 2 with dilation_rate 2"),
        ((ConvLayer(0, 3),), "filters must be positive, got 0"),
        ((ConvLayer(8, -1),), "kernel_size must be positive, got -1"),
        ((ConvLayer(8, 3, padding="full"),), "unknown padding 'full'; expected valid or same"),
        ((ConvLayer(8, 3, activation="sotfmax"),), "unknown activation 'sotfmax'"),
        ((ConvLayer(8, 3, pool_size=27),), "pool size 27 does not fit its 26x26 output"),
        ((ConvLayer(8, 3, dropout=1.0),), r"dropout must be in \[0, 1\)"),
        ((), "at least one conv layer"),
    ],
)
def test_invalid_configs_name_the_layer_and_the_reason(
    layers: tuple[ConvLayer, ...], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        infer_shapes(ModelConfig(conv=layers), n_classes=10)


def test_same_padding_keeps_a_kernel_larger_than_its_input_valid() -> None:
    shapes = infer_shapes(
        ModelConfig(conv=(ConvLayer(4, 3, strides=4), ConvLayer(4, 9, padding="same"))), 3
    )
    assert shapes[1].output_shape == (7, 7, 4)


def test_seed_preset_is_the_course_model() -> None:
    import keras

    preset = PRESETS["seed"]
    assert (preset.epochs, preset.validation_split) == (3, 0.2)
    model = build_model(preset.model, n_classes=10)
    conv, flatten, dense = model.layers[1:]
    assert isinstance(conv, keras.layers.Conv2D)
    assert (conv.filters, conv.kernel_size, conv.padding, conv.activation.__name__) == (
        10,
        (3, 3),
        "valid",
        "relu",
    )
    assert tuple(conv.output.shape[1:]) == (26, 26, 10)
    assert isinstance(flatten, keras.layers.Flatten)
    assert dense.units == 10 and dense.activation.__name__ == "softmax"
    assert model.input.name == "images"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_builds_with_the_shapes_the_formula_predicts(preset: str) -> None:
    config = PRESETS[preset].model
    model = build_model(config, n_classes=3)
    predicted = infer_shapes(config, n_classes=3)
    assert [layer.name for layer in model.layers[1:]] == [layer.name for layer in predicted]
    assert [tuple(layer.output.shape[1:]) for layer in model.layers[1:]] == [
        layer.output_shape for layer in predicted
    ]
    assert model.output.shape[1:] == (3,)


def test_train_config_round_trips_through_a_dict() -> None:
    config = PRESETS["deep"].replace(classes=("Shirt", "Dress"), seed=7)
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_train_config_from_a_wrong_dict_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a training config"):
        TrainConfig.from_dict({"epochs": 3})
