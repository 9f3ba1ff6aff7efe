"""training's `convserve` subcommands: train, import, export-onnx; TensorFlow only when one runs."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from convserve.artifact import INTERPOLATIONS
from convserve.cli import CommandError, positive_int

__all__ = ["add_export_onnx", "add_import", "add_train"]


def add_train(parser: argparse.ArgumentParser) -> None:
    """train a Conv2D classifier on Fashion-MNIST or your images and export a versioned artifact

    Fit a preset (or a config file) on Fashion-MNIST or on a folder of images (--images DIR:
    one subfolder of PNG/JPEG files per class), evaluate on the test images and export
    MODELS_DIR/NAME/VERSION/: model.keras, the ONNX graphs the server runs (checked against
    Keras on the test images) and metadata.json. Flags override the preset.
    """
    parser.add_argument(
        "--preset",
        default="seed",
        help="seed (the course's model, the default), small (for tests), deep, or strong "
        "(the most accurate: ~0.93 in 15 minutes on 2 cores)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="a JSON training config, or a metadata.json to retrain the model it describes",
    )
    parser.add_argument("--name", default="fashion", help="model name (default: fashion)")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--data-dir", type=Path, help="Fashion-MNIST IDX files (default: Debian's)")
    parser.add_argument(
        "--images", type=Path, metavar="DIR",
        help="train on a folder of images instead: DIR/CLASS/*.png|jpg, one subfolder per "
        "class (sorted names), or DIR/train/CLASS and DIR/test/CLASS",
    )  # fmt: skip
    parser.add_argument(
        "--image-size", type=_image_size, metavar="HxW",
        help="resize the images to this (default: their size, when they all share one)",
    )  # fmt: skip
    parser.add_argument(
        "--color", choices=["grayscale", "rgb"],
        help="convert the images to this (default: rgb if any image has colour)",
    )  # fmt: skip
    parser.add_argument(
        "--interpolation", choices=INTERPOLATIONS,
        help="how images are resized, in training and by the server (default: bilinear)",
    )  # fmt: skip
    parser.add_argument(
        "--test-split", type=float,
        help="without DIR/test: the share of each class held out for testing (default: 0.2)",
    )  # fmt: skip
    parser.add_argument(
        "--classes",
        help='comma-separated subset of class names, e.g. "Shirt,Dress,Ankle boot"',
    )
    parser.add_argument("--epochs", type=positive_int)
    parser.add_argument("--batch-size", type=positive_int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--validation-split", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--schedule", choices=["constant", "one_cycle"],
        help="learning rate: constant, or one_cycle (warm-up for an epoch, cosine decay to 0)",
    )  # fmt: skip
    parser.add_argument(
        "--flip", action=argparse.BooleanOptionalAction, help="augment with left-right flips"
    )
    parser.add_argument("--shift", type=float, help="augment with shifts up to this fraction")
    parser.add_argument(
        "--patience", type=int, help="early stopping: epochs without better validation accuracy"
    )
    parser.add_argument(
        "--max-minutes", type=float, help="time budget for fitting: fewer epochs if they don't fit"
    )
    parser.add_argument(
        "--conv",
        action="append",
        metavar="SPEC",
        help="a conv layer, repeatable, replacing the preset's stack: "
        "FILTERS:KERNEL[:PADDING[:STRIDES[:DILATION[:ACTIVATION]]]][,bn][,pool=N][,dropout=F]",
    )
    parser.add_argument("--head", choices=["flatten", "global_avg"])
    parser.add_argument("--dense-units", type=int, help="a hidden Dense(relu) before the softmax")
    parser.add_argument("--dropout", type=float, help="dropout before the classifier")
    parser.add_argument("--train-limit", type=positive_int, help="train on the first N images")
    parser.add_argument("--test-limit", type=positive_int, help="evaluate on the first N images")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.add_argument(
        "--no-report", dest="report", action="store_false",
        help="skip the evaluation report (VERSION/report/: pictures and model card)",
    )  # fmt: skip
    parser.set_defaults(run=_run_train)


def add_export_onnx(parser: argparse.ArgumentParser) -> None:
    """write a new version with the ONNX graphs the server runs, from an older version

    For versions trained before convserve served ONNX (model.keras only), or to re-export
    with this convserve: publishes MODELS_DIR/NAME/NEXT with the same model.keras and
    metadata plus model.onnx, features.onnx, explain.onnx (if the gradients export) and
    filters.npz, each checked against Keras first.
    """
    parser.add_argument("name", help="the model's name")
    parser.add_argument("--version", type=positive_int, help="the version (default: the latest)")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--data-dir", type=Path, help="Fashion-MNIST IDX files (default: Debian's)")
    parser.set_defaults(run=_run_export_onnx)


def add_import(parser: argparse.ArgumentParser) -> None:
    """import a classifier trained elsewhere (ONNX or Keras) as a version to serve

    Writes MODELS_DIR/NAME/NEXT from PATH, a .onnx file (NCHW or NHWC input, 1 or 3
    channels, a fixed height and width, a dynamic batch; output [batch, classes], logits or
    probabilities) or a .keras model (any functional model): the ONNX graph the server runs,
    its feature maps by conv layer, its filters and metadata.json. Callers send pixels 0..255
    NHWC as to any convserve model; the model sees pixels * SCALE + OFFSET.
    """
    parser.add_argument("path", type=Path, metavar="PATH", help="a .onnx or .keras file")
    parser.add_argument("--name", required=True, help="the model's name")
    parser.add_argument(
        "--classes", required=True, help='the class names in output order, e.g. "cat,dog,bird"'
    )
    parser.add_argument("--scale", type=float, default=1.0, help="pixel scale (default: 1)")
    parser.add_argument("--offset", type=float, default=0.0, help="pixel offset (default: 0)")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.set_defaults(run=_run_import)


def _run_import(args: argparse.Namespace) -> int:
    from convserve.artifact import ArtifactError, read
    from training.errors import ExportError
    from training.importer import import_model

    classes = [name.strip() for name in args.classes.split(",")]
    try:
        path = import_model(
            args.path, name=args.name, classes=classes, models_dir=args.models_dir,
            scale=args.scale, offset=args.offset,
        )  # fmt: skip
    except (ArtifactError, ExportError) as exc:
        raise CommandError(str(exc)) from exc
    metadata = read(path)
    convs = [layer.name for layer in metadata.layers if layer.is_conv]
    print(
        f"imported {path}: input {'x'.join(map(str, metadata.input.shape))}, "
        f"{len(metadata.classes)} classes, conv layers {', '.join(convs) or 'none'}; "
        f"{metadata.describe_origin()}"
    )
    return 0


def _run_export_onnx(args: argparse.Namespace) -> int:
    from convserve.artifact import ArtifactError
    from convserve.fashion_mnist import DataError
    from training.errors import ExportError
    from training.export import export_onnx

    try:
        path = export_onnx(args.models_dir, args.name, args.version or 0, data_dir=args.data_dir)
    except (ArtifactError, DataError, ExportError) as exc:
        raise CommandError(str(exc)) from exc
    print(f"exported {path}: {', '.join(sorted(p.name for p in path.iterdir()))}")
    return 0


def _train_config(args: argparse.Namespace) -> Any:
    from training.model import PRESETS, ConfigError, ConvLayer, TrainConfig

    if args.config is not None:
        loaded = json.loads(args.config.read_text())
        config = TrainConfig.from_dict(loaded.get("training", {}).get("config", loaded))
    elif args.preset in PRESETS:
        config = PRESETS[args.preset]
    else:
        raise ConfigError(f"unknown preset {args.preset!r}; expected one of {', '.join(PRESETS)}")
    model_changes: dict[str, Any] = {
        key: value
        for key, value in (
            ("head", args.head),
            ("dense_units", args.dense_units),
            ("dropout", args.dropout),
        )
        if value is not None
    }
    if args.conv:
        model_changes["conv"] = tuple(ConvLayer.parse(spec) for spec in args.conv)
    changes: dict[str, Any] = {
        key: getattr(args, key)
        for key in (
            "epochs",
            "batch_size",
            "learning_rate",
            "validation_split",
            "seed",
            "schedule",
            "flip",
            "shift",
            "patience",
            "max_minutes",
            "train_limit",
            "test_limit",
            "image_size",
            "color",
            "interpolation",
            "test_split",
        )
        if getattr(args, key) is not None
    }
    if args.images:
        changes["images"] = str(args.images)
    if args.classes:
        changes["classes"] = tuple(name.strip() for name in args.classes.split(","))
    if model_changes:
        changes["model"] = dataclasses.replace(config.model, **model_changes)
    return config.replace(**changes)


def _image_size(text: str) -> tuple[int, int]:
    """HxW, e.g. 32x32."""
    height, _, width = text.lower().partition("x")
    if not (height.isdigit() and width.isdigit() and int(height) > 0 and int(width) > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: expected HEIGHTxWIDTH, e.g. 32x32")
    return int(height), int(width)


def _run_train(args: argparse.Namespace) -> int:
    from convserve.fashion_mnist import DataError
    from training.errors import ExportError
    from training.model import ConfigError
    from training.publish import train

    try:
        path, result = train(
            _train_config(args),
            name=args.name,
            models_dir=args.models_dir,
            data_dir=args.data_dir,
            verbose=0 if args.quiet else None,
            report=args.report,
        )
    except (DataError, ConfigError, ExportError) as exc:
        raise CommandError(str(exc)) from exc
    print(
        f"exported {path}: test accuracy {result.test_accuracy:.4f}, loss {result.test_loss:.4f} "
        f"on {result.test_examples} test images; {len(result.class_names)} classes; "
        f"fit {result.fit_seconds:.1f} s on {result.train_examples} training images"
    )
    if args.report:
        print(f"report: {path / 'report'}/ (model_card.md, confusion_matrix.png, "
              "misclassified.png, learning_curve.png)")  # fmt: skip
    return 0
