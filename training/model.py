"""Model configuration, its validation, and `build_model`: a Keras Conv2D stack → softmax."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from convserve.artifact import COLORS, INTERPOLATIONS
from training.reference import effective_kernel, output_size

if TYPE_CHECKING:
    import keras

__all__ = [
    "ACTIVATIONS",
    "PRESETS",
    "ConfigError",
    "ConvLayer",
    "LayerShape",
    "ModelConfig",
    "TrainConfig",
    "build_model",
    "infer_shapes",
]

ACTIVATIONS = frozenset(
    {
        "relu",
        "relu6",
        "leaky_relu",
        "elu",
        "selu",
        "gelu",
        "silu",
        "swish",
        "tanh",
        "sigmoid",
        "softplus",
        "linear",
    }
)
HEADS = ("flatten", "global_avg")
SCHEDULES = ("constant", "one_cycle")


class ConfigError(ValueError):
    """A model or training configuration that cannot be built; the message names the layer."""


@dataclass(frozen=True)
class ConvLayer:
    """One `Conv2D`, optionally followed by batch norm, max pooling and dropout (in that order)."""

    filters: int
    kernel_size: int
    strides: int = 1
    padding: str = "valid"
    dilation_rate: int = 1
    activation: str = "relu"
    batch_norm: bool = False
    pool_size: int = 0
    dropout: float = 0.0

    SPEC_HELP = (
        "FILTERS:KERNEL[:PADDING[:STRIDES[:DILATION[:ACTIVATION]]]][,bn][,pool=N][,dropout=F], "
        "e.g. 32:3:same:1:1:relu,bn,pool=2"
    )

    @classmethod
    def parse(cls, spec: str) -> ConvLayer:
        """Parse the CLI form, e.g. `32:3:same:1:1:relu,bn,pool=2,dropout=0.25`."""
        conv, *extras = spec.split(",")
        fields = conv.split(":")
        if not 2 <= len(fields) <= 6:
            raise ConfigError(f"conv spec {spec!r}: expected {cls.SPEC_HELP}")
        names = ("filters", "kernel_size", "padding", "strides", "dilation_rate", "activation")
        kwargs: dict[str, Any] = {}
        try:
            for name, text in zip(names, fields, strict=False):
                kwargs[name] = text if name in ("padding", "activation") else int(text)
            for extra in extras:
                key, _, value = extra.partition("=")
                if key == "bn" and not value:
                    kwargs["batch_norm"] = True
                elif key == "pool":
                    kwargs["pool_size"] = int(value)
                elif key == "dropout":
                    kwargs["dropout"] = float(value)
                else:
                    raise ConfigError(f"unknown option {extra!r}")
        except (ValueError, ConfigError) as exc:
            raise ConfigError(f"conv spec {spec!r}: {exc}; expected {cls.SPEC_HELP}") from None
        return cls(**kwargs)


@dataclass(frozen=True)
class ModelConfig:
    """The architecture: conv stack → flatten or global average pooling → [dense] → softmax."""

    conv: tuple[ConvLayer, ...]
    head: str = "flatten"
    dense_units: int = 0
    dropout: float = 0.0
    input_shape: tuple[int, int, int] = (28, 28, 1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        data["conv"] = tuple(ConvLayer(**layer) for layer in data.get("conv", ()))
        if "input_shape" in data:
            data["input_shape"] = tuple(data["input_shape"])
        return cls(**data)


@dataclass(frozen=True)
class TrainConfig:
    """Everything `convserve train` needs to reproduce a model: architecture, fit and data."""

    model: ModelConfig
    epochs: int = 3
    batch_size: int = 32
    validation_split: float = 0.2
    learning_rate: float = 0.001
    seed: int = 0
    # "constant", or "one_cycle": warm up linearly over the first epoch to learning_rate,
    # then decay along a cosine to 0 at the last epoch (or the last the time budget allows).
    schedule: str = "constant"
    # Augmentation of the training images in the input pipeline (the exported model has no
    # augmentation layers): random left-right flips; random shifts up to `shift` of the size.
    flip: bool = False
    shift: float = 0.0
    # Stop when validation accuracy has not improved for this many epochs (0: never; under
    # one_cycle only in the second half of the epochs), and keep the best epoch's weights
    # (with a validation split, always).
    patience: int = 0
    # A time budget for fitting, minutes (0: none): the epochs are cut to what fits.
    max_minutes: float = 0.0
    classes: tuple[str, ...] = ()
    train_limit: int | None = None
    test_limit: int | None = None
    # A folder of the user's images instead of Fashion-MNIST (see training.data): resized to
    # image_size (height, width) with `interpolation`, converted to `color` ("grayscale" or
    # "rgb"); unset, both come from the images. Without DIR/train + DIR/test, a seeded
    # test_split of each class is the test set.
    images: str = ""
    image_size: tuple[int, ...] = ()
    color: str = ""
    interpolation: str = "bilinear"
    test_split: float = 0.2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The inverse of `to_dict`, e.g. from a metadata.json's training.config."""
        try:
            data = dict(data)
            data["model"] = ModelConfig.from_dict(data["model"])
            data["classes"] = tuple(data.get("classes", ()))
            data["image_size"] = tuple(data.get("image_size", ()))
            return cls(**data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a training config: {exc}") from None

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def check(self) -> None:
        """Raise ConfigError for fit settings Keras would fail on (or silently misuse)."""
        _check_positive("training", epochs=self.epochs, batch_size=self.batch_size,
                        learning_rate=self.learning_rate)  # fmt: skip
        if not 0 <= self.validation_split < 1:
            raise ConfigError(f"validation_split must be in [0, 1), got {self.validation_split}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"unknown schedule {self.schedule!r}; expected one of {', '.join(SCHEDULES)}"
            )
        if not 0 <= self.shift < 0.5:
            raise ConfigError(f"shift must be in [0, 0.5) of the image size, got {self.shift}")
        if self.patience < 0 or self.max_minutes < 0:
            raise ConfigError("patience and max_minutes must be >= 0 (0: off)")
        if not self.images and (self.image_size or self.color):
            raise ConfigError("image_size and color apply to a folder of images (--images DIR)")
        if self.image_size and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ConfigError(f"image_size {list(self.image_size)}: expected [height, width] > 0")
        if self.color not in ("", *COLORS.values()):
            raise ConfigError(f"color {self.color!r}: expected {' or '.join(COLORS.values())}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"interpolation {self.interpolation!r}: expected one of {', '.join(INTERPOLATIONS)}"
            )


PRESETS: dict[str, TrainConfig] = {
    # The course's model: Conv2D(10, 3, relu) → Flatten → Dense softmax; adam, 3 epochs.
    "seed": TrainConfig(model=ModelConfig(conv=(ConvLayer(10, 3),))),
    # Tiny and quick, for tests: one strided conv keeps the dense layer small.
    "small": TrainConfig(
        model=ModelConfig(conv=(ConvLayer(4, 3, strides=2),)), epochs=1, batch_size=64
    ),
    # A deeper stack that exercises padding, dilation, batch norm and pooling.
    "deep": TrainConfig(
        model=ModelConfig(
            conv=(
                ConvLayer(32, 3, padding="same", batch_norm=True),
                ConvLayer(32, 3, dilation_rate=2, pool_size=2, dropout=0.1),
                ConvLayer(64, 3, padding="same", batch_norm=True, pool_size=2, dropout=0.2),
            ),
            dense_units=128,
            dropout=0.3,
        ),
        epochs=10,
        batch_size=64,
    ),
    # The most accurate model found that trains in 15 minutes on 2 CPU cores (~0.93, see
    # docs/training.md): convs at 28, 14 and 7 pixels, batch norm, global average pooling
    # (Grad-CAM's head); flips and 1-pixel shifts; one-cycle Adam; the budget re-plans the
    # epochs. Only 16 filters at 28x28: that layer's batch norm and pooling are memory-bound,
    # and halving it paid for a second conv at 14x14.
    "strong": TrainConfig(
        model=ModelConfig(
            conv=(
                ConvLayer(16, 3, padding="same", batch_norm=True, pool_size=2),
                ConvLayer(64, 3, padding="same", batch_norm=True),
                ConvLayer(64, 3, padding="same", batch_norm=True, pool_size=2),
                ConvLayer(128, 3, padding="same", batch_norm=True),
            ),
            head="global_avg",
            dropout=0.2,
        ),
        epochs=14,
        batch_size=128,
        validation_split=0.1,
        learning_rate=0.003,
        schedule="one_cycle",
        flip=True,
        shift=0.05,
        patience=4,
        max_minutes=15,
    ),
}


@dataclass(frozen=True)
class LayerShape:
    """A layer `build_model` will create: its Keras class, name, arguments and output shape."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)


def _check_positive(where: str, **values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ConfigError(f"{where}: {name} must be positive, got {value}")


def _check_dropout(where: str, rate: float) -> None:
    if not 0 <= rate < 1:
        raise ConfigError(f"{where}: dropout must be in [0, 1), got {rate}")


def infer_shapes(config: ModelConfig, n_classes: int) -> list[LayerShape]:
    """Walk the stack with the output-size formula, rejecting what Keras could not build.

    Returns the layers `build_model` creates, named as a fresh Keras session would name them.
    """
    height, width, channels = config.input_shape
    _check_positive("input_shape", height=height, width=width, channels=channels)
    if not config.conv:
        raise ConfigError("the model needs at least one conv layer")
    if n_classes < 2:
        raise ConfigError(f"the classifier needs at least 2 classes, got {n_classes}")
    layers: list[LayerShape] = []
    counts: dict[str, int] = {}

    def add(kind: str, prefix: str, shape: tuple[int, ...], **options: Any) -> None:
        n = counts.get(prefix, 0)
        counts[prefix] = n + 1
        layers.append(LayerShape(prefix if n == 0 else f"{prefix}_{n}", kind, shape, options))

    for index, conv in enumerate(config.conv, start=1):
        n = counts.get("conv2d", 0)
        where = f"conv layer {index} ({'conv2d' if n == 0 else f'conv2d_{n}'})"
        _check_conv(where, conv, height, width)
        height = output_size(
            height, conv.kernel_size, conv.strides, conv.padding, conv.dilation_rate
        )
        width = output_size(width, conv.kernel_size, conv.strides, conv.padding, conv.dilation_rate)
        channels = conv.filters
        add(
            "Conv2D", "conv2d", (height, width, channels),
            filters=conv.filters, kernel_size=conv.kernel_size, strides=conv.strides,
            padding=conv.padding, dilation_rate=conv.dilation_rate, activation=conv.activation,
        )  # fmt: skip
        if conv.batch_norm:
            add("BatchNormalization", "batch_normalization", (height, width, channels))
        if conv.pool_size:
            if conv.pool_size < 0 or conv.pool_size > min(height, width):
                raise ConfigError(
                    f"{where}: pool size {conv.pool_size} does not fit its {height}x{width} output"
                )
            height, width = height // conv.pool_size, width // conv.pool_size
            add(
                "MaxPooling2D", "max_pooling2d", (height, width, channels), pool_size=conv.pool_size
            )
        if conv.dropout:
            add("Dropout", "dropout", (height, width, channels), rate=conv.dropout)

    if config.head == "flatten":
        add("Flatten", "flatten", (height * width * channels,))
    elif config.head == "global_avg":
        add("GlobalAveragePooling2D", "global_average_pooling2d", (channels,))
    else:
        raise ConfigError(f"unknown head {config.head!r}; expected one of {', '.join(HEADS)}")
    if config.dense_units < 0:
        raise ConfigError(f"dense_units must be >= 0, got {config.dense_units}")
    if config.dense_units:
        add("Dense", "dense", (config.dense_units,), units=config.dense_units, activation="relu")
    _check_dropout("classifier", config.dropout)
    if config.dropout:
        add("Dropout", "dropout", layers[-1].output_shape, rate=config.dropout)
    add("Dense", "dense", (n_classes,), units=n_classes, activation="softmax")
    return layers


def _check_conv(where: str, conv: ConvLayer, height: int, width: int) -> None:
    _check_positive(
        where,
        filters=conv.filters,
        kernel_size=conv.kernel_size,
        strides=conv.strides,
        dilation_rate=conv.dilation_rate,
    )
    if conv.padding not in ("valid", "same"):
        raise ConfigError(f"{where}: unknown padding {conv.padding!r}; expected valid or same")
    if conv.activation not in ACTIVATIONS:
        raise ConfigError(
            f"{where}: unknown activation {conv.activation!r}; "
            f"expected one of {', '.join(sorted(ACTIVATIONS))}"
        )
    if conv.strides > 1 and conv.dilation_rate > 1:
        raise ConfigError(
            f"{where}: strides {conv.strides} with dilation_rate {conv.dilation_rate}; "
            "Keras allows strides > 1 or dilation > 1, not both"
        )
    k_eff = effective_kernel(conv.kernel_size, conv.dilation_rate)
    if conv.padding == "valid" and k_eff > min(height, width):
        span = (
            f" (spans {k_eff} with dilation {conv.dilation_rate})"
            if k_eff > conv.kernel_size
            else ""
        )
        raise ConfigError(
            f"{where}: kernel {conv.kernel_size}{span} is larger than its "
            f"{height}x{width} input with padding 'valid'"
        )
    _check_dropout(where, conv.dropout)


def build_model(config: ModelConfig, n_classes: int) -> keras.Model:
    """Build (not compile) the Keras model; layer names are stable: conv2d, conv2d_1, …, dense."""
    import keras

    x = inputs = keras.Input(shape=config.input_shape, name="images")
    for layer in infer_shapes(config, n_classes):
        x = getattr(keras.layers, layer.kind)(name=layer.name, **layer.options)(x)
        if tuple(x.shape[1:]) != layer.output_shape:
            built = tuple(x.shape[1:])
            raise ConfigError(
                f"{layer.name}: Keras built {built}, the formula says {layer.output_shape}"
            )
    return keras.Model(inputs, x, name="convserve")
