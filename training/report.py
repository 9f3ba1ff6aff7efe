"""The evaluation report written beside an artifact: per-class figures, pictures, model card.

report/confusion_matrix.png   test images by true (rows) and predicted (columns) class
report/misclassified.png      test images the model got wrong, with both labels
report/learning_curve.png     loss, accuracy and learning rate per epoch
report/model_card.md          data, configuration, figures and limits, in Markdown
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convserve.artifact import Layer, Metadata
from convserve.pictures import pyplot

if TYPE_CHECKING:
    from training.model import TrainConfig
    from training.train import TrainResult

__all__ = ["REPORT_DIR", "class_figures", "write_report"]

REPORT_DIR = "report"
MISCLASSIFIED_SHOWN = 36


def class_figures(
    labels: np.ndarray, predicted: np.ndarray, class_names: tuple[str, ...]
) -> dict[str, Any]:
    """The confusion matrix and each class's precision, recall and F1 on the test images."""
    n = len(class_names)
    confusion = np.zeros((n, n), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = []
    for index, name in enumerate(class_names):
        hits = int(confusion[index, index])
        predicted_as = int(confusion[:, index].sum())
        actual = int(confusion[index].sum())
        precision = hits / predicted_as if predicted_as else 0.0
        recall = hits / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append(
            {
                "class": name,
                "precision": round(precision, 4),
                "recall": round(recall, 4),
                "f1": round(f1, 4),
                "support": actual,
            }
        )
    return {"per_class": per_class, "confusion_matrix": confusion.tolist()}


def write_report(result: TrainResult, directory: Path, metadata: Metadata) -> list[Path]:
    """Write the report into `directory` (created); returns the files written."""
    assert result.test_labels is not None and result.test_probabilities is not None
    assert result.test_images is not None
    directory.mkdir(parents=True, exist_ok=True)
    predicted = result.test_probabilities.argmax(axis=1)
    figures = metadata.evaluation
    written = [
        _confusion_png(
            directory / "confusion_matrix.png", figures["confusion_matrix"], result.class_names
        ),
        _misclassified_png(directory / "misclassified.png", result, predicted),
        _learning_curve_png(directory / "learning_curve.png", result),
    ]
    card = directory / "model_card.md"
    card.write_text(model_card(result, metadata))
    return [*written, card]


def _confusion_png(path: Path, confusion: list[list[int]], class_names: tuple[str, ...]) -> Path:
    plt = pyplot()
    matrix = np.array(confusion)
    # Rows normalised: the colour is the share of that true class, the number its count.
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = 2.5 + 0.6 * len(class_names)
    figure, axes = plt.subplots(figsize=(size + 1.5, size), layout="constrained")
    image = axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(matrix):
        if count:
            axes.text(
                column,
                row,
                str(count),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if share[row, column] > 0.5 else "black",
            )
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(ticks, class_names, fontsize=8)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    axes.set_title(f"confusion matrix: {matrix.sum()} test images, accuracy {accuracy:.4f}")
    figure.colorbar(image, ax=axes, label="share of the true class")
    return _save(plt, figure, path)


def _misclassified_png(path: Path, result: TrainResult, predicted: np.ndarray) -> Path:
    assert result.test_images is not None and result.test_probabilities is not None
    assert result.test_labels is not None
    plt = pyplot()
    wrong = np.flatnonzero(predicted != result.test_labels)
    # The most confident mistakes first: the ones a user would most want to know about.
    confidence = result.test_probabilities[wrong, predicted[wrong]]
    shown = wrong[np.argsort(-confidence, kind="stable")][:MISCLASSIFIED_SHOWN]
    columns = 6
    rows = max(1, -(-len(shown) // columns))
    figure, axes = plt.subplots(
        rows,
        columns,
        figsize=(2.0 * columns, 2.2 * rows + 0.5),
        squeeze=False,
        layout="constrained",
    )
    names = result.class_names
    for ax in axes.flat:
        ax.axis("off")
    for ax, index in zip(axes.flat, shown, strict=False):
        image = result.test_images[index]
        ax.imshow(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image,
                  cmap="gray", vmin=0, vmax=255)  # fmt: skip
        guess = int(predicted[index])
        ax.set_title(
            f"test[{index}] {names[result.test_labels[index]]}\n→ {names[guess]} "
            f"{result.test_probabilities[index, guess]:.2f}",
            fontsize=7,
        )
    figure.suptitle(
        f"{len(wrong)} of {len(predicted)} test images misclassified; "
        f"the {len(shown)} most confident mistakes (true → predicted, probability)"
    )
    return _save(plt, figure, path)


def _learning_curve_png(path: Path, result: TrainResult) -> Path:
    plt = pyplot()
    history = result.history
    epochs = np.arange(1, len(history["loss"]) + 1)
    figure, (loss, accuracy, rate) = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    for axes, metric in ((loss, "loss"), (accuracy, "accuracy")):
        axes.plot(
            epochs,
            history[metric],
            marker="o",
            label="training (augmented)"
            if result.config.flip or result.config.shift
            else "training",
        )
        if f"val_{metric}" in history:
            axes.plot(epochs, history[f"val_{metric}"], marker="o", label="validation")
        axes.set_xlabel("epoch")
        axes.set_title(metric)
        axes.grid(alpha=0.3)
        axes.legend()
    accuracy.axhline(
        result.test_accuracy, color="gray", linestyle="--", label=f"test {result.test_accuracy:.4f}"
    )
    accuracy.legend()
    if result.best_epoch and "val_accuracy" in history:
        accuracy.axvline(result.best_epoch, color="gray", linestyle=":")
    rate.plot(epochs, history["learning_rate"], marker="o")
    rate.set_title(f"learning rate at each epoch's end ({result.config.schedule})")
    rate.set_xlabel("epoch")
    rate.grid(alpha=0.3)
    return _save(plt, figure, path)


def _save(plt: Any, figure: Any, path: Path) -> Path:
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def model_card(result: TrainResult, metadata: Metadata) -> str:
    """The model card: what the model is for, how it was made, how well it does, its limits."""
    config = result.config
    height, width, _ = metadata.input.shape
    images = f"{height}x{width} {metadata.preprocessing.color} images"
    data, use = _data_and_use(result, metadata)
    return f"""# {metadata.name} version {metadata.version}

A Keras Conv2D classifier of {images} into {len(result.class_names)} classes
({", ".join(result.class_names)}), exported by convserve {metadata.framework["convserve"]}
on {metadata.created_at}.

{_figures_section(result, metadata)}

## Data

{data}
Training: {result.train_examples:,} images, of which the last {config.validation_split:.0%}
were held out for validation (early stopping and the choice of the kept epoch); the test split
was used only for the figures above.

{_training_section(result, metadata)}

## Intended use and limits

{use}
- The probabilities are softmax outputs, not calibrated confidences.
- Some classes look alike at this resolution (see "most confused"); their recall is lower.
- Trained and measured on one dataset; nothing here says how it does on other clothing
  photos, and Fashion-MNIST's labels themselves contain some errors.
"""


def _figures_section(result: TrainResult, metadata: Metadata) -> str:
    """The model card's figures on the test split: overall, most confused, and per class."""
    evaluation = metadata.evaluation
    rows = "\n".join(
        f"| {c['class']} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | "
        f"{c['support']} |"
        for c in evaluation["per_class"]
    )
    confused = _most_confused(evaluation["confusion_matrix"], result.class_names)
    return f"""## Figures (test split, {result.test_examples:,} images never used in training)

- **test accuracy {result.test_accuracy:.4f}**, test loss {result.test_loss:.4f}
- {metadata.parameters:,} parameters; fit in {result.fit_seconds:,.0f} s on
  {metadata.framework["machine"]}
- most confused: {confused}

| class | precision | recall | F1 | test images |
|---|---|---|---|---|
{rows}

Pictures: `confusion_matrix.png`, `misclassified.png` (the most confident mistakes),
`learning_curve.png`."""


def _training_section(result: TrainResult, metadata: Metadata) -> str:
    """The model card's layers and how they were fitted."""
    config = result.config
    layers = "\n".join(
        f"| {layer.name} | {layer.type} | {list(layer.output_shape)} | "
        f"{_layer_options(layer)} | {layer.parameters:,} |"
        for layer in metadata.layers
    )
    augmentation, epochs_run = _augmentation(config), metadata.training["epochs_run"]
    stopped = result.stopped or f"ran all {config.epochs} epochs"
    return f"""## Training

| layer | type | output | options | parameters |
|---|---|---|---|---|
{layers}

Adam, batch {config.batch_size}, learning rate {config.learning_rate:g} ({config.schedule}
schedule), seed {config.seed}; augmentation: {augmentation}; {epochs_run} epochs
({stopped}); the weights kept are those of epoch {result.best_epoch}. The whole configuration
is `training.config` in metadata.json: `convserve train --config metadata.json` retrains it."""


def _augmentation(config: TrainConfig) -> str:
    """The augmentations a fit applied, in words ("none" if none)."""
    parts = (
        ("random left-right flips", config.flip),
        (f"random shifts up to {config.shift:g} of the size", config.shift),
    )
    return ", ".join(part for part, on in parts if on) or "none"


def _data_and_use(result: TrainResult, metadata: Metadata) -> tuple[str, str]:
    """The model card's data paragraph and first limit, for Fashion-MNIST or an image folder."""
    source = metadata.training["data_source"]
    if not result.config.images:
        return (
            "Fashion-MNIST (Zalando Research, MIT licence): 60,000 training and 10,000 test "
            "images of\nclothing, 28x28 grayscale, centred, white on black. Read from "
            f"{source}.",
            "- For images like Fashion-MNIST's: one centred garment, 28x28, light on a dark "
            "background.\n  Photos, several objects, other sizes or inverted colours are out of "
            "its distribution, and\n  it will still answer one of its classes with a probability "
            "that can be high.",
        )
    height, width, _ = metadata.input.shape
    preprocessing = metadata.preprocessing
    return (
        f"The images in {source}, one folder per class. Each was converted to "
        f"{preprocessing.color} and resized to {height}x{width} ({preprocessing.interpolation}); "
        "the server does the same to PNG/JPEG requests, with the same code. Test images: "
        f"{result.test_split}.",
        f"- For images like those in {source}. Other kinds of image are out of its "
        "distribution,\n  and it will still answer one of its classes with a probability "
        "that can be high.",
    )


def _layer_options(layer: Layer) -> str:
    if not layer.is_conv:
        return ""
    return (
        f"kernel {layer.kernel_size[0]}, strides {layer.strides[0]}, "
        f"{layer.padding}, dilation {layer.dilation_rate[0]}, {layer.activation}"
    )


def _most_confused(confusion: list[list[int]], class_names: tuple[str, ...]) -> str:
    matrix = np.array(confusion)
    np.fill_diagonal(matrix, 0)
    pairs = np.dstack(np.unravel_index(np.argsort(-matrix, axis=None), matrix.shape))[0][:3]
    return (
        "; ".join(
            f"{class_names[true]} taken for {class_names[guess]} {matrix[true, guess]} times"
            for true, guess in pairs
            if matrix[true, guess]
        )
        or "no mistakes"
    )
