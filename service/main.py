"""`convserve serve`: settings from flags and CONVSERVE_* env, run until SIGTERM/SIGINT, exit 0."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "main", "serve"]

_PARSERS: dict[Any, Any] = {int: int, float: float, Path: Path}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per settings field; flags left out fall through to env vars, then defaults."""
    from service.settings import Settings

    for name, field in Settings.model_fields.items():
        kind = field.annotation
        choices = typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else None
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=_PARSERS.get(kind, str) if not choices else str,
            choices=choices,
            default=argparse.SUPPRESS,
            help=f"{field.description} (env CONVSERVE_{name.upper()}, default {field.default!r})",
        )


async def serve(settings: Any) -> None:
    from service.grpc.server import Server

    server = Server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    await stop.wait()
    logging.getLogger(__name__).info(
        "signal received: draining for up to %.1f s", settings.grace_seconds
    )
    await server.stop()


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from pydantic import ValidationError

    from service.settings import Settings

    values = {name: getattr(args, name) for name in Settings.model_fields if hasattr(args, name)}
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"convserve serve: error: {problems}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(serve(settings))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="convserve serve", description="Serve the models in MODELS_DIR over gRPC."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
