"""The client's subcommands of `convserve`: predict, featuremap, explain, filters, models,
health, loadtest. They import the client library (grpc) only when they run."""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from convserve.cli import CommandError, positive_int

__all__ = [
    "add_explain",
    "add_featuremap",
    "add_filters",
    "add_health",
    "add_loadtest",
    "add_models",
    "add_predict",
]


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
    parser.add_argument("--version", type=positive_int, help="model version (default: latest)")


def _add_images(parser: argparse.ArgumentParser, what: str = "") -> None:
    """The images a command sends: files, or the first N of the real Fashion-MNIST test set."""
    _add_model(parser)
    parser.add_argument(
        "images", nargs="*", type=Path, metavar="IMAGE", help="PNG or JPEG files" + what
    )
    parser.add_argument(
        "--fashion-mnist-test",
        type=positive_int,
        metavar="N",
        help="use the first N images of the real Fashion-MNIST test set instead of files",
    )
    parser.add_argument("--data-dir", type=Path, help="Fashion-MNIST IDX files (default: Debian's)")


def _runs(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int]) -> None:
    """`run` is the subcommand: the server's errors become one-line command errors."""

    @functools.wraps(run)
    def checked(args: argparse.Namespace) -> int:
        from client.errors import ConvserveError

        try:
            return run(args)
        except ConvserveError as exc:
            raise CommandError(str(exc)) from exc

    parser.set_defaults(run=checked)


def add_predict(parser: argparse.ArgumentParser) -> None:
    """classify images with a running server"""
    _add_target(parser)
    _add_images(parser)
    parser.add_argument("--top-k", type=positive_int, default=3)
    parser.add_argument("--batch-size", type=positive_int, default=1000, help="images per request")
    _runs(parser, _run_predict)


def add_featuremap(parser: argparse.ArgumentParser) -> None:
    """a conv layer's activations for an image, printed and drawn"""
    _add_target(parser)
    _add_images(parser)
    parser.add_argument("--layer", help="layer name (default: the first conv layer)")
    parser.add_argument(
        "--pre-activation", action="store_true", help="show the convolution before the activation"
    )
    parser.add_argument("--png", type=Path, help="draw the first image's channels as a grid")
    _runs(parser, _run_featuremap)


def add_explain(parser: argparse.ArgumentParser) -> None:
    """heatmaps of where the model sees evidence for a class (Grad-CAM, HiResCAM, occlusion)"""
    _add_target(parser)
    _add_images(parser)
    parser.add_argument(
        "--layer", help="conv layer for gradcam/hirescam (default: the last with gradients)"
    )
    parser.add_argument(
        "--class", dest="class_name", metavar="CLASS",
        help="class name or index to explain (default: each image's most probable class)",
    )  # fmt: skip
    parser.add_argument(
        "--method", choices=("gradcam", "hirescam", "occlusion"), default="",
        help="gradcam (Grad-CAM, for global average pooling heads), hirescam (HiResCAM, any "
        "head) or occlusion (no gradients, any model); default: the model's own choice",
    )  # fmt: skip
    parser.add_argument("--png", type=Path, help="draw each image with its heatmap over it")
    _runs(parser, _run_explain)


def add_filters(parser: argparse.ArgumentParser) -> None:
    """a conv layer's kernels and biases, drawn"""
    _add_target(parser)
    _add_model(parser)
    parser.add_argument("--layer", help="conv layer name (default: the first conv layer)")
    parser.add_argument("--png", type=Path, help="draw the kernels, a column per filter")
    _runs(parser, _run_filters)


def add_models(parser: argparse.ArgumentParser) -> None:
    """list the models a server serves, or load / unload one

    list (default): every model served, its versions and classes. load NAME: (re)load NAME's
    versions from the server's MODELS_DIR now. unload NAME: stop serving NAME until it is
    loaded again.
    """
    _add_target(parser)
    parser.add_argument("action", nargs="?", choices=["list", "load", "unload"], default="list")
    parser.add_argument("name", nargs="?", help="the model to load or unload")
    _runs(parser, _run_models)


def add_health(parser: argparse.ArgumentParser) -> None:
    """exit 0 if the server (or one model) is SERVING, else 1"""
    _add_target(parser)
    parser.add_argument("--service", default="", help="a model name (default: the whole server)")
    _runs(parser, _run_health)


def add_loadtest(parser: argparse.ArgumentParser) -> None:
    """closed-loop concurrency or open-loop rate sweeps against a server

    Closed loop (--concurrency, the default 1,8,32,64) or open loop (--rate), a table of
    throughput and latency percentiles per step; see client/loadtest.py.
    """
    _add_target(parser)
    _add_images(parser, " to send instead of the test set's first 256 (decoded by the server)")
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
    _runs(parser, _run_loadtest)


def _run_loadtest(args: argparse.Namespace) -> int:
    from client import loadtest

    if not args.images and args.fashion_mnist_test is None:
        args.fashion_mnist_test = 256
    images, _ = _load_images(args)
    return loadtest.main(args, images)


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
        from convserve.fashion_mnist import load  # its DataError is a one-line command error

        test = load("test", data_dir=args.data_dir, limit=args.fashion_mnist_test)
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
        from convserve.pictures import feature_map_png

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
    where = f" at {result.layer.describe()}" if result.layer else ""
    print(f"model {result.model} version {result.version}: {result.method}{where}")
    names = _image_names(args, len(result.classes))
    for name, label, heatmap, row in zip(
        names, result.classes, result.heatmaps, result.probabilities, strict=True
    ):
        y, x = divmod(int(heatmap.argmax()), heatmap.shape[1])
        print(f"{name}: {result.class_names[label]} {row[label]:.3f}, heatmap max "
              f"{heatmap.max():.4f} at row {y}, column {x}")  # fmt: skip
    if args.png:
        from convserve.pictures import MAX_TILES, explain_png

        if not isinstance(images, np.ndarray):  # files: drawn at the size the server saw
            from PIL import Image  # matplotlib's

            height, width = result.heatmaps.shape[1:]
            images = np.stack([np.asarray(Image.open(path).convert("RGB").resize((width, height)))
                               for path in args.images])  # fmt: skip
        size = explain_png(args.png, images.reshape(*result.heatmaps.shape, -1),
                           result.heatmaps, result.classes, result.probabilities,
                           result.class_names, result.layer, result.method)  # fmt: skip
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
        from convserve.pictures import filters_png

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
                f"classes {', '.join(model.class_names)}; {model.origin}"
            )
    return 0


def _run_health(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        status = client.health(args.service)
    print(status)
    return 0 if status == "SERVING" else 1
