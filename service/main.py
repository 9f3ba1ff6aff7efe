"""`convserve serve`: settings from flags and CONVSERVE_* env, run until SIGTERM/SIGINT, exit 0."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from convserve.cli import CommandError

__all__ = ["add_arguments", "add_serve", "main", "serve"]


def _boolean(text: str) -> bool:
    if text.lower() not in {"true", "false", "1", "0", "yes", "no", "on", "off"}:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in {"true", "1", "yes", "on"}


_PARSERS: dict[Any, Any] = {int: int, float: float, Path: Path, bool: _boolean}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per settings field; flags left out fall through to env vars, then defaults."""
    from service.settings import Settings

    for name, field in Settings.model_fields.items():
        kind = field.annotation
        default = field.get_default(call_default_factory=True)  # e.g. this machine's CPUs
        choices = typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else None
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=_PARSERS.get(kind, str) if not choices else str,
            choices=choices,
            default=argparse.SUPPRESS,
            help=f"{field.description} (env CONVSERVE_{name.upper()}, default {default!r})",
        )


def add_serve(parser: argparse.ArgumentParser) -> None:
    """serve the models in MODELS_DIR over gRPC

    Serve every model under MODELS_DIR over gRPC until SIGTERM/SIGINT. Each flag is also an
    environment variable CONVSERVE_<NAME>.
    """
    try:
        add_arguments(parser)  # imports pydantic-settings
    except ImportError:  # a client-only install: no pydantic-settings, no ONNX Runtime
        parser.set_defaults(run=_not_installed)
    else:
        parser.set_defaults(run=run)


def _not_installed(args: argparse.Namespace) -> int:
    raise CommandError("the server is not installed: pip install 'convserve[serve]'")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The `event_loop` setting's loop maker."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


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
        "signal received: draining for %.1f s, then up to %.1f s for requests in flight",
        settings.drain_seconds,
        settings.grace_seconds,
    )
    await server.stop()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, pid, the record's `fields` (the
    access log's) and the traceback, if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,  # which worker, with --workers
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    # The supervisor of --workers imports no more than this: ~40 MB, not a server's ~100.
    from service.settings import ACCESS_LOGGER, WORKER_ENV, Settings

    values = {name: getattr(args, name) for name in Settings.model_fields if hasattr(args, name)}
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"convserve serve: error: {problems}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if settings.log_format == "json"
        else logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=settings.log_level, handlers=[handler])
    logging.getLogger(ACCESS_LOGGER).setLevel(
        logging.INFO if settings.access_log else logging.WARNING
    )
    zero = settings.port == 0 or settings.http_port == 0
    if settings.workers > 1 and zero and "workers" not in settings.model_fields_set:
        # Workers share one port only when it is fixed; port 0 would give each its own. Asked
        # for (flag or env), > 1 workers with port 0 stays an error (in serve_workers).
        logging.getLogger(__name__).info(
            "--port 0 (any free port): 1 worker, not the default %d (one per CPU)",
            settings.workers,
        )
        settings = settings.model_copy(update={"workers": 1})
    from service.layouts import problem
    from service.workers import check_ports_free, serve_workers

    if settings.model_name and (wrong := problem(settings.models_dir, settings.model_name)):
        raise CommandError(wrong)

    if settings.workers > 1:
        return serve_workers(settings)
    if os.environ.get(WORKER_ENV) != "1":  # (a worker shares its ports)
        check_ports_free(settings)  # before gRPC logs its own error
    with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
        runner.run(serve(settings))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="convserve serve", description="Serve the models in MODELS_DIR over gRPC."
    )
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except CommandError as exc:  # as `convserve serve` says it
        print(f"convserve serve: error: {exc}", file=sys.stderr)
        return 2
