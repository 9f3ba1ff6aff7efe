"""`--workers N`: N server processes on one port that act, to every caller, as one server.

The supervisor (the process `convserve serve` starts with) runs the workers and owns what
must be the same in all of them:

- **Control calls.** A worker that gets RepositoryModelLoad/Unload hands it to the supervisor,
  which numbers it and sends it to every worker; the worker answers its caller once every
  worker has applied it (or names the one that did not within the call's deadline). One
  sequencer means concurrent calls are applied in the same order everywhere.
- **State.** What control calls changed (models unloaded on request) is kept, so that a
  worker that replaces a dead one starts with it, and takes traffic only once it has loaded.
- **Metrics.** One /metrics port for the whole server (prometheus_client's multiprocess mode,
  see `metrics.serve_workers`).

Each worker talks to the supervisor over its own socketpair, inherited at start: no file, no
port, nothing another user (or process) can open. Messages are JSON lines:

    supervisor → worker  {"hello": {"unloaded": [...], "replacement": bool}}  (first)
                         {"apply": SEQ, "action": "load"|"unload", "name": NAME}
                         {"result": ID, "code": "OK"|status name, "message": TEXT}
    worker → supervisor  {"ready": true}  (serving)
                         {"call": ID, "action": ..., "name": ..., "timeout": SECONDS}
                         {"applied": SEQ, "code": ..., "message": ..., "unloaded": bool}

A worker that dies is replaced (the others keep serving); one that keeps dying (5 times in a
minute) stops the server with the reason, so that an orchestrator restarts it whole.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import functools
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from convserve.cli import CommandError

__all__ = [
    "Link",
    "Supervisor",
    "check_port_free",
    "check_ports_free",
    "port_in_use",
    "serve_workers",
]

log = logging.getLogger(__name__)

# The worker's end of its socketpair with the supervisor: a file descriptor number.
LINK_FD_ENV = "CONVSERVE_SUPERVISOR_FD"
# A control call without a deadline waits this long for every worker (loading can be slow).
CONTROL_TIMEOUT_SECONDS = 60.0
# A worker that exits this often within the window is not replaced: the server exits.
RESTARTS, RESTART_WINDOW_SECONDS = 5, 60.0
# Workers exit with 2 when they cannot start at all (a taken port, bad settings).
USAGE_ERROR = 2


def port_in_use(port: int, flag: str, exc: OSError) -> CommandError:
    """The one line a taken (or unbindable) port gets: the port and the flag that set it."""
    if exc.errno == errno.EADDRINUSE:
        return CommandError(f"port {port} ({flag}) is in use; pick another with {flag}")
    return CommandError(f"cannot listen on port {port} ({flag}): {exc.strerror or exc}")


def check_port_free(host: str, port: int, flag: str) -> None:
    """Raise `port_in_use` if nothing may listen on host:port. Workers share their port with
    SO_REUSEPORT, which would let them join another server's socket: this bind does not."""
    family, kind, _, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: TIME_WAIT is free
        try:
            probe.bind(address)
        except OSError as exc:
            raise port_in_use(port, flag, exc) from None


def check_ports_free(settings: Any) -> None:
    """Raise `port_in_use` for the first fixed port of the server's (gRPC, HTTP) that is
    taken. (The supervisor opens the metrics port itself.)"""
    for port, flag in ((settings.port, "--port"), (settings.http_port, "--http-port")):
        if port > 0:
            check_port_free(settings.host, port, flag)


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message).encode() + b"\n")
    await writer.drain()


async def _messages(reader: asyncio.StreamReader) -> Any:
    """The peer's messages until it closes its end (or dies)."""
    with contextlib.suppress(ConnectionError):
        while line := await reader.readline():
            yield json.loads(line)


# -- the worker's side --------------------------------------------------------------------

Apply = Callable[[str, str], Awaitable[tuple[str, str, bool]]]


class Link:
    """A worker's line to its supervisor: `join`, `serving`, then `call` for each control
    call it gets."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._calls: dict[int, asyncio.Future[tuple[str, str]]] = {}
        self._numbers = itertools.count(1)
        self._applying: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_environment(cls) -> Link | None:
        """The link the supervisor gave this process, or None: a server of its own."""
        fd = os.environ.get(LINK_FD_ENV)
        return cls(int(fd)) if fd else None

    async def join(self) -> tuple[set[str], bool]:
        """Connect: the server's state (the models unloaded on request), and whether this
        worker replaces one that died (then it loads before it takes traffic). Control calls
        that come meanwhile wait for `serving`."""
        self._reader, self._writer = await asyncio.open_unix_connection(
            sock=socket.socket(fileno=self._fd)
        )
        hello = json.loads(await self._reader.readline() or b"{}").get("hello")
        if hello is None:
            raise RuntimeError("the supervisor closed the link before saying hello")
        self._tasks.append(asyncio.create_task(self._listen()))
        return set(hello["unloaded"]), hello["replacement"]

    async def serving(self, apply: Apply) -> None:
        """The worker serves (its models loaded): from now on `apply(action, name)` runs
        each control call, in order."""
        assert self._writer is not None
        self._tasks.append(asyncio.create_task(self._apply_in_order(apply)))
        await _send(self._writer, {"ready": True})

    async def call(self, action: str, name: str, timeout: float | None) -> tuple[str, str]:
        """Have every worker apply `action` to `name`: (status name, message) once all did,
        or once the time left (`timeout`, less a margin to answer in) is up."""
        assert self._writer is not None
        seconds = CONTROL_TIMEOUT_SECONDS if timeout is None else timeout
        seconds -= min(0.5, seconds / 10)  # the answer must reach the caller in time
        number = next(self._numbers)
        self._calls[number] = asyncio.get_running_loop().create_future()
        try:
            await _send(
                self._writer,
                {"call": number, "action": action, "name": name, "timeout": max(0.0, seconds)},
            )
            return await self._calls[number]
        finally:
            del self._calls[number]

    async def _listen(self) -> None:
        assert self._reader is not None
        async for message in _messages(self._reader):
            if "apply" in message:
                self._applying.put_nowait(message)
            elif (future := self._calls.get(message["result"])) and not future.done():
                future.set_result((message["code"], message["message"]))
        # The supervisor is gone (killed): stop as on SIGTERM rather than serve on alone.
        log.error("the supervisor has gone; stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    async def _apply_in_order(self, apply: Apply) -> None:
        assert self._writer is not None
        while True:
            message = await self._applying.get()
            code, text, unloaded = await apply(message["action"], message["name"])
            reply = {"applied": message["apply"], "code": code, "message": text}
            await _send(self._writer, {**reply, "unloaded": unloaded})

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._writer is not None:
            self._writer.close()


# -- the supervisor -----------------------------------------------------------------------


@dataclass(eq=False)
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    writer: asyncio.StreamWriter
    acks: dict[int, asyncio.Future[dict[str, Any] | None]] = field(default_factory=dict)
    listener: asyncio.Task[None] | None = None

    def __str__(self) -> str:
        return f"worker {self.index} (pid {self.process.pid})"


@dataclass
class _Call:
    origin: _Worker
    number: int
    action: str
    name: str
    deadline: float  # the loop's clock


class Supervisor:
    """Starts `settings.workers` workers, keeps them in step and replaced, serves /metrics.

    `await Supervisor(settings).run()` returns the exit status once every worker has
    stopped: after SIGTERM/SIGINT (forwarded to each, which drains), or after a worker
    could not start or kept dying."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self._members: dict[int, _Worker] = {}  # joined: they get every control call
        self._queue: asyncio.Queue[_Call | tuple[_Worker, bool]] = asyncio.Queue()
        self._unloaded: set[str] = set()
        self._sequence = 0
        self._exits: collections.deque[float] = collections.deque()
        self._served: set[int] = set()  # the workers that have served (before dying, maybe)
        self._stopping = False
        self._stopped = asyncio.Event()
        self._status = 0
        self._metrics_dir = ""

    async def run(self) -> int:
        from service import metrics
        from service.cpus import worker_cpus

        settings = self.settings
        check_ports_free(settings)
        self._metrics_dir = tempfile.mkdtemp(prefix="convserve-metrics-")
        metrics_server = None
        try:
            if settings.metrics_port >= 0:
                try:
                    metrics_server = metrics.serve_workers(
                        settings.metrics_port, settings.metrics_host, self._metrics_dir, self._pids
                    )
                except OSError as exc:
                    raise port_in_use(settings.metrics_port, "--metrics-port", exc) from None
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, functools.partial(self._stop, signum))
            sequencer = asyncio.create_task(self._sequence_calls())
            cpus = worker_cpus(settings.workers) if settings.cpu_affinity else None
            slots = [self._keep(index, cpus) for index in range(settings.workers)]
            log.info(
                "starting %d workers on port %d%s; metrics on port %s",
                settings.workers,
                settings.port,
                f", pinned to CPUs {cpus}" if cpus else "",
                metrics_server.server_port if metrics_server else "none",
            )
            await asyncio.gather(*slots)
            sequencer.cancel()
            return self._status
        finally:
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _pids(self) -> dict[str, int]:
        return {str(i): w.process.pid for i, w in sorted(self._members.items())}

    def _stop(self, signum: int, status: int = 0) -> None:
        """Stop every worker (each drains on the signal), replace none, exit with `status`."""
        if not self._stopping:
            self._stopping, self._status = True, status
            if signum in (signal.SIGTERM, signal.SIGINT):
                log.info("%s: stopping the workers", signal.Signals(signum).name)
        for worker in self._members.values():
            if worker.process.returncode is None:
                worker.process.send_signal(signum)

    # -- each worker's slot: start it, and again when it dies -------------------------------

    async def _keep(self, index: int, cpus: list[int] | None) -> None:
        replacement = False
        while not self._stopping:
            worker = await self._spawn(index, cpus, replacement)
            status = await worker.process.wait()
            self._left(worker)
            if self._stopping:  # drained: 0, unless it failed (one still starting dies of it)
                self._status = max(self._status, status)
                return
            if status == USAGE_ERROR:  # it said why on stderr; every other would say the same
                log.error("%s could not start; stopping the server", worker)
                self._stop(signal.SIGTERM, USAGE_ERROR)
                return
            now = time.monotonic()
            self._exits.append(now)
            while self._exits[0] < now - RESTART_WINDOW_SECONDS:
                self._exits.popleft()
            if len(self._exits) >= RESTARTS:
                log.error(
                    "%s %s: workers exited %d times in %.0f s; stopping the server",
                    worker,
                    _exit_reason(status),
                    len(self._exits),
                    RESTART_WINDOW_SECONDS,
                )
                self._stop(signal.SIGTERM, 1)
                return
            log.error("%s %s; starting another in its place", worker, _exit_reason(status))
            replacement = True

    async def _spawn(self, index: int, cpus: list[int] | None, replacement: bool) -> _Worker:
        """Start worker `index` (pinned to its CPU, if any) with its end of a socketpair."""
        from pydantic import SecretStr

        from service.cpus import SERVER_CPUS_ENV
        from service.settings import WORKER_ENV

        ours, theirs = socket.socketpair()
        env = {
            **os.environ,
            **{  # every setting, as the worker reads it from the environment
                f"CONVSERVE_{name.upper()}": str(
                    value.get_secret_value() if isinstance(value, SecretStr) else value
                )
                for name, value in self.settings.model_dump().items()
                if value is not None
            },
            "CONVSERVE_WORKERS": "1",
            "CONVSERVE_METRICS_PORT": "-1",  # the supervisor serves every worker's metrics
            "PROMETHEUS_MULTIPROC_DIR": self._metrics_dir,
            WORKER_ENV: "1",
            LINK_FD_ENV: str(theirs.fileno()),
        }
        pin = None
        if cpus:  # set in the child before Python starts, so every thread it makes inherits it
            pin = functools.partial(os.sched_setaffinity, 0, {cpus[index]})
            env[SERVER_CPUS_ENV] = ",".join(map(str, cpus))
        with theirs:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "service", env=env, pass_fds=[theirs.fileno()],
                preexec_fn=pin,
            )  # fmt: skip
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        worker = _Worker(index, process, writer)
        worker.listener = asyncio.create_task(self._listen(worker, reader))
        self._queue.put_nowait((worker, replacement))  # joins between two control calls
        return worker

    def _left(self, worker: _Worker) -> None:
        """A worker exited: it gets no more control calls; its live metrics go."""
        from service import metrics

        if self._members.get(worker.index) is worker:
            del self._members[worker.index]
        for ack in worker.acks.values():
            if not ack.done():
                ack.set_result(None)
        worker.writer.close()
        metrics.forget_worker(worker.process.pid, self._metrics_dir)

    async def _listen(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        async for message in _messages(reader):
            if "call" in message:
                deadline = loop.time() + float(message["timeout"])
                call = _Call(worker, message["call"], message["action"], message["name"], deadline)
                self._queue.put_nowait(call)
            elif "applied" in message:
                ack = worker.acks.pop(message["applied"], None)
                if ack is not None and not ack.done():
                    ack.set_result(message)
            elif "ready" in message and worker.index in self._served:
                log.info("%s serving in its predecessor's place", worker)
            elif "ready" in message:
                self._served.add(worker.index)
                if len(self._served) == self.settings.workers:
                    self._log_serving()

    def _log_serving(self) -> None:
        settings = self.settings
        from service.http.announce import announcement

        http = f", HTTP on port {settings.http_port}" if settings.http_port > 0 else ""
        log.info(
            "serving with %d workers: gRPC on port %d%s%s",
            settings.workers,
            settings.port,
            http,
            announcement(settings, settings.http_port if settings.http_port > 0 else None),
        )

    # -- control calls, one at a time, in one order ------------------------------------------

    async def _sequence_calls(self) -> None:
        while True:
            item = await self._queue.get()
            if isinstance(item, tuple):  # a worker joins: the state as of the last call
                worker, replacement = item
                if worker.process.returncode is None:
                    self._members[worker.index] = worker
                    hello = {"unloaded": sorted(self._unloaded), "replacement": replacement}
                    with contextlib.suppress(ConnectionError):
                        await _send(worker.writer, {"hello": hello})
                continue
            code, message = await self._apply(item)
            with contextlib.suppress(ConnectionError):  # the caller's worker may have died
                await _send(
                    item.origin.writer, {"result": item.number, "code": code, "message": message}
                )

    async def _apply(self, call: _Call) -> tuple[str, str]:
        """Have every worker apply `call`; (status name, message) for its caller."""
        self._sequence += 1
        workers = list(self._members.values())
        loop = asyncio.get_running_loop()
        for worker in workers:
            worker.acks[self._sequence] = loop.create_future()
            message = {"apply": self._sequence, "action": call.action, "name": call.name}
            with contextlib.suppress(ConnectionError):  # a dead one's ack resolves to None
                await _send(worker.writer, message)
        acks = {worker: worker.acks[self._sequence] for worker in workers}
        await asyncio.wait(acks.values(), timeout=max(0.0, call.deadline - loop.time()))
        answers = {w: answer for w, ack in acks.items() if ack.done() and (answer := ack.result())}
        if answers:  # what the call changed, as the workers' repositories say
            unloaded = next(iter(answers.values()))["unloaded"]
            (self._unloaded.add if unloaded else self._unloaded.discard)(call.name)
        failed = [(w, a) for w, a in answers.items() if a["code"] != "OK"]
        if failed:
            worker, answer = failed[0]
            if len(failed) == len(answers):  # every worker says the same: the caller's error
                return answer["code"], answer["message"]
            return answer["code"], f"{worker}: {answer['message']}"
        late = [w for w, ack in acks.items() if not ack.done()]
        if late:
            done = ", ".join(str(w.index) for w in answers) or "none"
            return "UNAVAILABLE", (
                f"{late[0]} did not {call.action} {call.name!r} in the time the call had "
                f"(workers that did: {done}); it will once it can. Load and unload are "
                "idempotent: retry to know when every worker has."
            )
        return "OK", ""


def _exit_reason(status: int) -> str:
    if status < 0:
        return f"was killed by {signal.Signals(-status).name}"
    return f"exited with status {status}"


def serve_workers(settings: Any) -> int:
    """`convserve serve --workers N` (N > 1): the supervisor, until its workers stop."""
    if settings.port == 0 or settings.http_port == 0:
        raise CommandError("--workers > 1 needs a fixed --port and --http-port (or -1: off)")
    return asyncio.run(Supervisor(settings).run())
