"""A Keras model's layers as metadata.json describes them, and the introspection export shares."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from convserve.artifact import Layer
from training.errors import ExportError
from training.reference import output_size, same_padding

if TYPE_CHECKING:
    import keras

__all__ = ["activated_output", "activation_name", "describe_layers"]

# The pooling layers whose window metadata.json records: their pool size is the kernel.
_POOLING = ("MaxPooling2D", "AveragePooling2D")


def describe_layers(model: keras.Model) -> list[Layer]:
    """Every layer's name, type and shapes; for Conv2D also its kernel, strides, padding, dilation
    and activation, for MaxPooling2D and AveragePooling2D their window (kernel = pool size).

    Each window's output shape is checked against O = floor((I − K_eff + 2P) / S) + 1.
    """
    layers = []
    for layer in model.layers:
        if layer.__class__.__name__ == "InputLayer":
            continue
        described = Layer(
            name=layer.name,
            type=layer.__class__.__name__,
            input_shape=tuple(int(d) for d in _first_input(layer).shape[1:]),
            output_shape=tuple(int(d) for d in layer.output.shape[1:]),
            parameters=int(layer.count_params()),
        )
        if described.is_conv:  # its activation: its own, or the activation layer after it
            activation = activation_name(activated_output(model, layer))
            described = _describe_conv(layer, described, activation)
        elif described.type in _POOLING:
            described = _describe_window(layer, described, layer.pool_size, (1, 1))
        layers.append(described)
    return layers


def _describe_conv(layer: Any, described: Layer, activation: str) -> Layer:
    described = dataclasses.replace(described, filters=int(layer.filters), activation=activation)
    return _describe_window(layer, described, layer.kernel_size, layer.dilation_rate)


def _describe_window(
    layer: Any, described: Layer, kernel: tuple[int, int], dilation: tuple[int, int]
) -> Layer:
    """`described` with the window of a layer that slides one over its input (a conv, a pooling
    layer), once its output shape is what the output-size formula says."""
    strides, padding = layer.strides, layer.padding
    axes = list(zip(described.input_shape[:2], kernel, strides, dilation, strict=True))
    padding_amount = [
        same_padding(size, k, s, d) if padding == "same" else (0, 0) for size, k, s, d in axes
    ]
    channels = described.filters if described.is_conv else described.input_shape[2]
    expected = (*(output_size(size, k, s, padding, d) for size, k, s, d in axes), channels)
    if expected != described.output_shape:
        raise ExportError(
            f"layer {layer.name}: Keras output shape {list(described.output_shape)} differs from "
            f"the output-size formula's {list(expected)}"
        )
    return dataclasses.replace(
        described,
        kernel_size=tuple(kernel),
        strides=tuple(strides),
        padding=padding,
        padding_amount=(*padding_amount[0], *padding_amount[1]),
        dilation_rate=tuple(dilation),
    )


def activated_output(model: Any, conv: Any) -> Any:
    """The layer whose output is `conv`'s activations: `conv` itself, or for a conv without
    an activation the activation layer that is its output's only consumer."""
    import keras

    if activation_name(conv) != "linear":
        return conv
    consumers = [
        layer for layer in model.layers
        if any(tensor is conv.output for tensor in _inputs(layer))
    ]  # fmt: skip
    activations = (keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU,
                   keras.layers.ELU, keras.layers.PReLU)  # fmt: skip
    if len(consumers) == 1 and isinstance(consumers[0], activations):
        return consumers[0]
    return conv


def activation_name(layer: Any) -> str:
    """A layer's activation: "softmax" for a Softmax layer, the function's name otherwise."""
    import keras

    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    if isinstance(layer, keras.layers.ReLU):
        return "relu"
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", type(layer).__name__.lower())


def _inputs(layer: Any) -> list[Any]:
    inputs = layer.input
    return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


def _first_input(layer: Any) -> Any:
    """A layer's input tensor; the first one of a layer of several (Add, Concatenate)."""
    return _inputs(layer)[0]
