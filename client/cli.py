"""The `convserve` command. Subcommands import their heavy modules (TensorFlow) only when run."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]


class CommandError(Exception):
    """A user error: printed as one line, exit status 2."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _add_train(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a Conv2D classifier on Fashion-MNIST and export a versioned artifact",
        description=(
            "Fit a preset (or a config file), evaluate on the test images and export "
            "MODELS_DIR/NAME/VERSION/{model.keras,metadata.json}. Flags override the preset."
        ),
    )
    parser.add_argument("--preset", default="seed", help="seed (the course's model), small, deep")
    parser.add_argument(
        "--config",
        type=Path,
        help="a JSON training config, or a metadata.json to retrain the model it describes",
    )
    parser.add_argument("--name", default="fashion", help="model name (default: fashion)")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--data-dir", help="directory of the Fashion-MNIST IDX files")
    parser.add_argument(
        "--classes",
        help='comma-separated subset of class names, e.g. "Shirt,Dress,Ankle boot"',
    )
    parser.add_argument("--epochs", type=_positive_int)
    parser.add_argument("--batch-size", type=_positive_int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--validation-split", type=float)
    parser.add_argument("--seed", type=int)
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
    parser.add_argument("--train-limit", type=_positive_int, help="train on the first N images")
    parser.add_argument("--test-limit", type=_positive_int, help="evaluate on the first N images")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.set_defaults(run=_run_train)


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
            "train_limit",
            "test_limit",
        )
        if getattr(args, key) is not None
    }
    if args.classes:
        changes["classes"] = tuple(name.strip() for name in args.classes.split(","))
    if model_changes:
        changes["model"] = dataclasses.replace(config.model, **model_changes)
    return config.replace(**changes)


def _run_train(args: argparse.Namespace) -> int:
    from training.data import DataError
    from training.model import ConfigError
    from training.train import ExportError, train

    try:
        path, result = train(
            _train_config(args),
            name=args.name,
            models_dir=args.models_dir,
            data_dir=args.data_dir,
            verbose=0 if args.quiet else None,
        )
    except (DataError, ConfigError, ExportError) as exc:
        raise CommandError(str(exc)) from exc
    print(
        f"exported {path}: test accuracy {result.test_accuracy:.4f}, loss {result.test_loss:.4f} "
        f"on {result.test_examples} test images; {len(result.class_names)} classes; "
        f"fit {result.fit_seconds:.1f} s on {result.train_examples} training images"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convserve", description="Train and serve convolutional image classifiers over gRPC."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_train(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (CommandError, OSError, json.JSONDecodeError) as exc:
        print(f"convserve {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
