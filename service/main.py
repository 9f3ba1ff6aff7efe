"""`convserve serve`: settings from flags and CONVSERVE_* env, run until SIGTERM/SIGINT, exit 0."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import typing
from collections.abc import Sequence
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
    """One JSON object per line: time, level, logger, message, the record's `fields` (the
    access log's) and the traceback, if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    # The supervisor of --workers imports no more than this: ~40 MB, not a server's ~100.
    from service.settings import ACCESS_LOGGER, Settings

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
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=settings.log_level, handlers=[handler])
    logging.getLogger(ACCESS_LOGGER).setLevel(
        logging.INFO if settings.access_log else logging.WARNING
    )
    if settings.workers > 1 and settings.port == 0 and "workers" not in settings.model_fields_set:
        # Workers share one port only when it is fixed; port 0 would give each its own. Asked
        # for (flag or env), > 1 workers with port 0 stays an error (in supervise).
        logging.getLogger(__name__).info(
            "--port 0 (any free port): 1 worker, not the default %d (one per CPU)",
            settings.workers,
        )
        settings = settings.model_copy(update={"workers": 1})
    if settings.workers > 1:
        return supervise(settings)
    asyncio.run(serve(settings))
    return 0


def supervise(settings: Any) -> int:
    """Run `settings.workers` single-worker servers on one port; forward signals; exit with them.

    One Python process tops out at one core (the event loop); the kernel spreads incoming
    connections over processes bound with SO_REUSEPORT (grpc's default on Linux).
    """
    if settings.port == 0:
        print("convserve serve: error: --workers > 1 needs a fixed --port", file=sys.stderr)
        return 2
    return _wait(_start_workers(settings))


def _start_workers(settings: Any) -> list[subprocess.Popen[bytes]]:
    """One `python -m service` per worker, each told every setting through the environment;
    with --cpu-affinity, worker i pinned to the i-th CPU (and told all the server's CPUs)."""
    from pydantic import SecretStr

    from service.cpus import SERVER_CPUS_ENV, worker_cpus
    from service.settings import WORKER_ENV

    base = {  # every setting, as the workers read it from the environment
        f"CONVSERVE_{name.upper()}": str(
            value.get_secret_value() if isinstance(value, SecretStr) else value
        )
        for name, value in settings.model_dump().items()
        if value is not None
    }
    cpus = worker_cpus(settings.workers) if settings.cpu_affinity else None
    children = []
    for index in range(settings.workers):
        env = {**os.environ, **base, "CONVSERVE_WORKERS": "1", WORKER_ENV: "1"}
        if settings.metrics_port > 0:
            env["CONVSERVE_METRICS_PORT"] = str(settings.metrics_port + index)
        pin = None
        if cpus:  # set in the child before Python starts, so every thread it makes inherits it
            pin = functools.partial(os.sched_setaffinity, 0, {cpus[index]})
            env[SERVER_CPUS_ENV] = ",".join(map(str, cpus))
        children.append(
            subprocess.Popen([sys.executable, "-m", "service"], env=env, preexec_fn=pin)
        )
    logging.getLogger(__name__).info(
        "started %d workers: pids %s%s",
        len(children),
        [c.pid for c in children],
        f", pinned to CPUs {cpus}" if cpus else "",
    )
    return children


def _wait(children: list[subprocess.Popen[bytes]]) -> int:
    """Forward SIGTERM/SIGINT to the workers and wait for them all; a worker that exits on
    its own takes the others down. The exit code: the largest of theirs."""
    stopping = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    codes: list[int] = []
    while len(codes) < len(children):
        pid, status = os.wait()
        codes.append(os.waitstatus_to_exitcode(status))
        if not stopping:  # a worker died on its own: take the others down, report failure
            logging.getLogger(__name__).error(
                "worker %d exited with %d; stopping the others", pid, codes[-1]
            )
            forward(signal.SIGTERM, None)
            codes[-1] = codes[-1] or 1
    return max(codes, key=abs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="convserve serve", description="Serve the models in MODELS_DIR over gRPC."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
