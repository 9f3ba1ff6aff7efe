"""The `convserve` command. Subcommands import their heavy modules (TensorFlow) only when run."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
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
    parser.add_argument("--train-limit", type=_positive_int, help="train on the first N images")
    parser.add_argument("--test-limit", type=_positive_int, help="evaluate on the first N images")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.add_argument(
        "--no-report", dest="report", action="store_false",
        help="skip the evaluation report (VERSION/report/: pictures and model card)",
    )  # fmt: skip
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
            "schedule",
            "flip",
            "shift",
            "patience",
            "max_minutes",
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


def _add_serve(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the models in MODELS_DIR over gRPC",
        description="Serve every model under MODELS_DIR over gRPC until SIGTERM/SIGINT. "
        "Each flag is also an environment variable CONVSERVE_<NAME>.",
    )
    try:
        from service.main import add_arguments

        add_arguments(parser)  # imports pydantic-settings
    except ImportError:  # a client-only install: no pydantic-settings, no TensorFlow
        parser.set_defaults(run=_serve_not_installed)
    else:
        parser.set_defaults(run=_run_serve)


def _serve_not_installed(args: argparse.Namespace) -> int:
    raise CommandError("the server is not installed: pip install 'convserve[serve]'")


def _run_serve(args: argparse.Namespace) -> int:
    from service.main import run

    return run(args)


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        default=os.environ.get("CONVSERVE_TARGET", "localhost:50051"),
        help="HOST:PORT of the server (env CONVSERVE_TARGET, default localhost:50051)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline per call, seconds")
    parser.add_argument(
        "--token",
        default=os.environ.get("CONVSERVE_TOKEN"),
        help="bearer token sent with every call (env CONVSERVE_TOKEN)",
    )
    parser.add_argument("--tls", action="store_true", help="connect over TLS (system CAs)")
    parser.add_argument("--ca-cert", type=Path, help="PEM CA certificates to trust (implies --tls)")
    parser.add_argument("--client-cert", type=Path, help="PEM client certificate (mutual TLS)")
    parser.add_argument("--client-key", type=Path, help="PEM key of --client-cert")


def _add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model name (default: the server's default model)")
    parser.add_argument("--version", type=_positive_int, help="model version (default: latest)")


def _add_images(parser: argparse.ArgumentParser) -> None:
    _add_model(parser)
    parser.add_argument("images", nargs="*", type=Path, metavar="IMAGE", help="PNG or JPEG files")
    parser.add_argument(
        "--fashion-mnist-test",
        type=_positive_int,
        metavar="N",
        help="use the first N images of the real Fashion-MNIST test set instead of files",
    )
    parser.add_argument("--data-dir", help="directory of the Fashion-MNIST IDX files")


def _add_client_commands(subparsers: Any) -> None:
    predict = subparsers.add_parser("predict", help="classify images with a running server")
    _add_target(predict)
    _add_images(predict)
    predict.add_argument("--top-k", type=_positive_int, default=3)
    predict.add_argument(
        "--batch-size", type=_positive_int, default=1000, help="images per request"
    )
    predict.set_defaults(run=_run_predict)

    featuremap = subparsers.add_parser(
        "featuremap", help="a conv layer's activations for an image, printed and drawn"
    )
    _add_target(featuremap)
    _add_images(featuremap)
    featuremap.add_argument("--layer", help="layer name (default: the first conv layer)")
    featuremap.add_argument(
        "--pre-activation", action="store_true", help="show the convolution before the activation"
    )
    featuremap.add_argument("--png", type=Path, help="draw the first image's channels as a grid")
    featuremap.set_defaults(run=_run_featuremap)

    explain = subparsers.add_parser(
        "explain", help="Grad-CAM heatmaps: where a conv layer sees evidence for a class"
    )
    _add_target(explain)
    _add_images(explain)
    explain.add_argument("--layer", help="layer name (default: the last conv layer)")
    explain.add_argument(
        "--class", dest="class_name", metavar="CLASS",
        help="class name or index to explain (default: each image's most probable class)",
    )  # fmt: skip
    explain.add_argument(
        "--method", choices=("gradcam", "hirescam"), default="gradcam",
        help="gradcam (Grad-CAM) or hirescam (HiResCAM: also for Flatten + Dense heads)",
    )  # fmt: skip
    explain.add_argument("--png", type=Path, help="draw each image with its heatmap over it")
    explain.set_defaults(run=_run_explain)

    filters = subparsers.add_parser("filters", help="a conv layer's kernels and biases, drawn")
    _add_target(filters)
    _add_model(filters)
    filters.add_argument("--layer", help="conv layer name (default: the first conv layer)")
    filters.add_argument("--png", type=Path, help="draw the kernels, a column per filter")
    filters.set_defaults(run=_run_filters)

    models = subparsers.add_parser(
        "models",
        help="list the models a server serves, or load / unload one",
        description="list (default): every model served, its versions and classes. "
        "load NAME: (re)load NAME's versions from the server's MODELS_DIR now. "
        "unload NAME: stop serving NAME until it is loaded again.",
    )
    _add_target(models)
    models.add_argument("action", nargs="?", choices=["list", "load", "unload"], default="list")
    models.add_argument("name", nargs="?", help="the model to load or unload")
    models.set_defaults(run=_run_models)

    health = subparsers.add_parser(
        "health", help="exit 0 if the server (or one model) is SERVING, else 1"
    )
    _add_target(health)
    health.add_argument("--service", default="", help="a model name (default: the whole server)")
    health.set_defaults(run=_run_health)


def _add_loadtest(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "loadtest",
        help="closed-loop concurrency or open-loop rate sweeps against a server",
        description="Closed loop (--concurrency, the default 1,8,32,64) or open loop (--rate), "
        "a table of throughput and latency percentiles per step; see client/loadtest.py.",
    )
    _add_target(parser)
    sweep = parser.add_mutually_exclusive_group()
    sweep.add_argument(
        "--concurrency", type=_counts, help="closed loop: calls in flight, e.g. 1,8,32,64 (default)"
    )
    sweep.add_argument(
        "--rate", type=_rates, help="open loop: calls started per second, e.g. 200,500"
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds per step (default 10)"
    )
    parser.add_argument("--requests", type=int, help="calls per step, instead of --duration")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds before each step is measured"
    )
    parser.add_argument(
        "--distribution",
        choices=("poisson", "uniform"),
        default="poisson",
        help="open loop: gaps between calls (default poisson)",
    )
    parser.add_argument(
        "--api", choices=("v1", "v2"), default="v1", help="convserve.v1 or V2 ModelInfer"
    )
    parser.add_argument("--workload", choices=("predict", "featuremap", "mix"), default="predict")
    parser.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    parser.add_argument("--layer", help="FeatureMap's layer (default: the first conv layer)")
    parser.add_argument("--processes", type=int, default=1, help="generator processes (default 1)")
    parser.add_argument("--json", type=Path, help="write the steps as JSON")
    parser.add_argument("--csv", type=Path, help="write the steps as CSV")
    parser.add_argument("--plot", type=Path, help="draw latency against throughput (PNG)")
    parser.add_argument(
        "--max-error-rate",
        type=float,
        default=1.0,
        help="exit 1 when failed calls / all calls exceed this (e.g. 0.01 in CI)",
    )
    parser.add_argument("--model", help="model name (default: the server's default model)")
    parser.add_argument("--version", type=int, help="model version (default: latest)")
    parser.add_argument(
        "--fashion-mnist-test",
        type=int,
        default=256,
        metavar="N",
        help="send images from the first N of the real test set (default 256)",
    )
    parser.add_argument("--data-dir", type=Path, help="Fashion-MNIST IDX files (default: Debian's)")
    parser.add_argument(
        "images", nargs="*", type=Path, metavar="IMAGE",
        help="PNG/JPEG files to send instead (encoded, decoded by the server)",
    )  # fmt: skip
    parser.set_defaults(run=_run_loadtest)


def _run_loadtest(args: argparse.Namespace) -> int:
    from client import loadtest

    return loadtest.main(args)


def _counts(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,8,32, got {text!r}")
    return values


def _rates(text: str) -> list[float]:
    values = [float(part) for part in text.split(",") if part]
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive rates like 100,500, got {text!r}")
    return values


def _load_images(args: argparse.Namespace) -> tuple[Any, Any]:
    """(images, labels or None) from IMAGE files or the real test set."""
    if args.fashion_mnist_test:
        if args.images:
            raise CommandError("give IMAGE files or --fashion-mnist-test, not both")
        from training.data import DataError, load

        try:
            test = load("test", data_dir=args.data_dir, limit=args.fashion_mnist_test)
        except DataError as exc:
            raise CommandError(str(exc)) from exc
        return test.images, test.labels
    if not args.images:
        raise CommandError("no images: give IMAGE files (PNG/JPEG) or --fashion-mnist-test N")
    return [path.read_bytes() for path in args.images], None


def _image_names(args: argparse.Namespace, count: int) -> list[str]:
    """The files' paths, or `test[i]` for images of the test set."""
    return [str(path) for path in args.images] or [f"test[{i}]" for i in range(count)]


def _connect(args: argparse.Namespace) -> Any:
    from client.client import Client

    return Client(
        args.target,
        timeout=args.timeout,
        token=args.token,
        tls=args.tls,
        ca_cert=args.ca_cert,
        client_cert=args.client_cert,
        client_key=args.client_key,
    )


def _run_predict(args: argparse.Namespace) -> int:
    import numpy as np

    images, labels = _load_images(args)
    names = _image_names(args, len(images))
    predicted = []
    with _connect(args) as client:
        for start in range(0, len(images), args.batch_size):
            result = client.predict(
                images[start : start + args.batch_size],
                model=args.model,
                version=args.version,
                top_k=args.top_k,
            )
            predicted.append(result.labels)
            if labels is None or len(images) <= 20:
                for offset, top in enumerate(result.top):
                    best = ", ".join(f"{score.name} {score.score:.3f}" for score in top)
                    print(f"{names[start + offset]}: {best}")
    print(f"model {result.model} version {result.version}")
    if labels is not None:
        correct = int((np.concatenate(predicted) == labels).sum())
        print(f"accuracy {correct / len(labels):.4f} ({correct}/{len(labels)} test images)")
    return 0


def _run_featuremap(args: argparse.Namespace) -> int:
    images, _ = _load_images(args)
    with _connect(args) as client:
        result = client.feature_map(
            images,
            layer=args.layer,
            pre_activation=args.pre_activation,
            model=args.model,
            version=args.version,
        )
    values = result.pre_activations if args.pre_activation else result.activations
    assert values is not None
    print(f"model {result.model} version {result.version}: {result.layer.describe()}")
    kind = "pre-activations" if args.pre_activation else "activations"
    print(
        f"{kind} {list(values.shape)}: min {values.min():.4f}, max {values.max():.4f}, "
        f"mean {values.mean():.4f}"
    )
    if args.png:
        from client.pictures import feature_map_png

        size = feature_map_png(args.png, values[0], result.layer, kind)
        _wrote(args.png, size, f"the {values.shape[-1]} channels of image 0")
    return 0


def _wrote(path: Path, size: tuple[int, int], what: str) -> None:
    print(f"wrote {path} ({size[0]}x{size[1]} pixels, {what})")


def _run_explain(args: argparse.Namespace) -> int:
    import numpy as np

    images, _ = _load_images(args)
    with _connect(args) as client:
        class_index = None
        if args.class_name is not None:
            class_index = _class_index(args.class_name, client.metadata(args.model, args.version))
        result = client.explain(
            images, layer=args.layer, class_index=class_index, method=args.method,
            model=args.model, version=args.version,
        )  # fmt: skip
    print(
        f"model {result.model} version {result.version}: {args.method} at {result.layer.describe()}"
    )
    names = _image_names(args, len(result.classes))
    for name, label, heatmap, row in zip(
        names, result.classes, result.heatmaps, result.probabilities, strict=True
    ):
        y, x = divmod(int(heatmap.argmax()), heatmap.shape[1])
        print(f"{name}: {result.class_names[label]} {row[label]:.3f}, heatmap max "
              f"{heatmap.max():.4f} at row {y}, column {x}")  # fmt: skip
    if args.png:
        from client.pictures import MAX_TILES, explain_png

        if not isinstance(images, np.ndarray):  # files: draw the grayscale the server saw
            from PIL import Image  # matplotlib's

            images = np.stack([np.asarray(Image.open(path).convert("L")) for path in args.images])
        size = explain_png(args.png, images.reshape(result.heatmaps.shape),
                           result.heatmaps, result.classes, result.probabilities,
                           result.class_names, result.layer, args.method)  # fmt: skip
        _wrote(args.png, size, f"{min(len(result.heatmaps), MAX_TILES)} images with their heatmaps")
    return 0


def _class_index(text: str, info: Any) -> int:
    if text.isdigit():
        return int(text)
    if text not in info.class_names:
        raise CommandError(
            f"class {text!r}: expected an index or one of {', '.join(info.class_names)}"
        )
    return int(info.class_names.index(text))


def _run_filters(args: argparse.Namespace) -> int:
    import numpy as np

    with _connect(args) as client:
        result = client.filters(args.layer, model=args.model, version=args.version)
    kernels = result.kernels
    print(f"model {result.model} version {result.version}: {result.layer.describe()}")
    print(f"kernels {list(kernels.shape)} (KH, KW, C_in, C_out): min {kernels.min():.4f}, "
          f"max {kernels.max():.4f}")  # fmt: skip
    if result.biases is not None:
        print(f"biases {list(result.biases.shape)}: {np.array2string(result.biases, precision=3)}")
    if kernels.shape[2] == 1 and kernels.shape[3] <= 16:  # the course's case: print them
        for f in range(kernels.shape[3]):
            print(f"filter {f}:\n{np.array2string(kernels[:, :, 0, f], precision=3)}")
    if args.png:
        from client.pictures import filters_png

        size = filters_png(args.png, kernels, result.biases, result.layer)
        _wrote(args.png, size, f"the kernels of {result.layer.name}")
    return 0


def _run_models(args: argparse.Namespace) -> int:
    if (args.action == "list") != (args.name is None):
        raise CommandError("usage: convserve models [list | load NAME | unload NAME]")
    with _connect(args) as client:
        if args.action != "list":
            getattr(client, f"{args.action}_model")(args.name)
            print(f"{args.action}ed {args.name}")
            return 0
        for model in client.list_models():
            default = " (default)" if model.is_default else ""
            versions = ", ".join(map(str, model.versions))
            print(
                f"{model.name}{default}: versions {versions}; "
                f"classes {', '.join(model.class_names)}"
            )
    return 0


def _run_health(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        status = client.health(args.service)
    print(status)
    return 0 if status == "SERVING" else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convserve", description="Train and serve convolutional image classifiers over gRPC."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_train(subparsers)
    _add_serve(subparsers)
    _add_client_commands(subparsers)
    _add_loadtest(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from client.errors import ConvserveError

    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (CommandError, ConvserveError, OSError, ValueError) as exc:
        print(f"convserve {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
