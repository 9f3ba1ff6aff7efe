"""The server's lifecycle: bind, load and warm every model, report SERVING; drain on stop."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from convserve.cli import CommandError
from service import metrics
from service.boundary import Boundary
from service.cpus import lower_grpc_threads, on_one_cpu, unpin
from service.errors import ServiceError, status
from service.grpc import v1, v2
from service.grpc.auth import TokenAuth
from service.grpc.engine import Engine
from service.http.announce import announcement
from service.model import Model
from service.repository import Repository
from service.settings import WORKER_ENV, Settings
from service.tokens import load_tokens
from service.workers import Link, port_in_use

__all__ = ["Server"]

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Server:
    """`port = await server.start()` (models loaded and warm), then `await server.stop(grace)`."""

    def __init__(
        self, settings: Settings, *, load_model: Callable[..., Model] | None = None
    ) -> None:
        """`load_model(MODELS_DIR/NAME/VERSION[, name=SERVED_AS])` makes a served model: by
        default `Model.load` with the settings' ONNX Runtime threads."""
        self.settings = settings
        self.repository = Repository(
            settings.models_dir,
            settings.default_model,
            load_model or functools.partial(Model.load, threads=settings.onnx_threads),
            settings.version_policy,
            settings.model_name,
        )
        self.metrics_port: int | None = None
        # A worker pinned to one CPU keeps its event loop there; its inference threads (the
        # large batches) may run on any CPU the server may use.
        self._executor = ThreadPoolExecutor(
            settings.inference_threads, thread_name_prefix="inference", initializer=unpin
        )
        self.engine = Engine(self.repository, self._executor, settings)
        # Loading models takes a while: never in the inference threads' way.
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="repository")
        self._watcher: asyncio.Task[None] | None = None
        self._health_names: set[str] = set()
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._grpc: grpc.aio.Server | None = None
        self._metrics_server: Any = None
        self._control_calls = {"load": self.repository.load, "unload": self.repository.unload}
        self._link = Link.from_environment()  # a worker of `--workers`: its supervisor
        # Both doors (gRPC, HTTP): the same servicers, boundary and tokens.
        tokens = load_tokens(settings)
        self._auth = TokenAuth(tokens) if tokens else None
        self._boundary = Boundary(settings.max_concurrent_requests)
        self._v1 = v1.ConvServeServicer(self.engine)
        self._v2 = v2.InferenceServicer(self.engine, self.control, self.ready)
        self._draining = False
        self.http_port: int | None = None
        self._http: Any = None  # the HTTP door's aiohttp runner

    async def start(self) -> int:
        """Bind and start answering (health NOT_SERVING), load every model, then report SERVING.

        Returns the bound gRPC port. Health names: "" (the server), the service, each model.
        A worker of `--workers` first joins its supervisor (see service.workers); one that
        replaces a dead worker loads first, and binds once it can answer.
        """
        started = time.perf_counter()
        await self._set_health(NOT_SERVING)
        replacement = False
        if self._link is not None:
            unloaded, replacement = await self._link.join()
            self.repository.unloaded |= unloaded
        self._start_metrics()  # first: if its port is taken, nothing is left running
        if replacement:  # the other workers serve meanwhile: take traffic once it can answer
            await self.change_repository(self.repository.load_all)
        address = _address(self.settings.host, self.settings.port)
        port = await self._listen(address)
        if not replacement:
            await self.change_repository(self.repository.load_all)
        if self.settings.poll_seconds > 0:
            self._watcher = asyncio.create_task(self._watch(self.settings.poll_seconds))
        metrics.WORKERS.set(1)
        if self._link is not None:
            await self._link.serving(self._apply)
        log.info(
            "serving %s on %s (gRPC port %d%s) after %.2f s%s%s",
            ", ".join(self.repository.names) or "no models",
            self.settings.host,
            port,
            f", HTTP port {self.http_port}" if self.http_port else "",
            time.perf_counter() - started,
            f"; metrics on port {self.metrics_port}" if self.metrics_port else "",
            "" if self._link else announcement(self.settings, self.http_port),
        )
        return port

    async def _listen(self, address: str) -> int:
        """Start the gRPC server on `address`, then the HTTP door (if on); the gRPC port."""
        server = self._grpc_server()
        credentials = self._tls_credentials()
        try:
            if credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, credentials)
        except RuntimeError:  # gRPC says only "Failed to bind"
            raise CommandError(
                f"cannot listen on {address} (--host, --port): the port is in use, or the "
                "host is not an address of this machine"
            ) from None
        await server.start()
        self._grpc = server
        if self.settings.cpu_affinity and on_one_cpu():
            lower_grpc_threads()  # measured: see docs/performance.md
        if self.settings.http_port >= 0:
            await self._start_http()
        return port

    async def _start_http(self) -> None:
        """The HTTP door on the gRPC host: the V2 REST API and both APIs as Connect calls."""
        from service.http import connect, explorer, rest
        from service.http.door import Door

        door = Door(self._boundary, self._auth, self.settings.max_message_bytes)
        rest.add_routes(door, self._v2)
        connect.add_routes(door, v1.SERVICE, self._v1, raw_responses=v1.RAW_RESPONSES)
        connect.add_routes(door, v2.SERVICE, self._v2)
        if self.settings.explorer:
            explorer.add_routes(door)
        port = self.settings.http_port
        try:
            self._http, self.http_port = await door.serve(
                self.settings.host,
                port,
                reuse_port=os.environ.get(WORKER_ENV) == "1",
                ssl_context=self._tls_context(),
                grace_seconds=self.settings.grace_seconds,
            )
        except OSError as exc:
            raise port_in_use(port, "--http-port", exc) from None

    def _grpc_server(self) -> grpc.aio.Server:
        """The gRPC server with every service on it: both APIs behind one boundary (and the
        tokens, if any), health, and reflection if asked for."""
        size = self.settings.max_message_bytes
        server = grpc.aio.server(
            interceptors=[self._auth] if self._auth else None,
            options=[
                ("grpc.max_receive_message_length", size),
                ("grpc.max_send_message_length", size),
                # Sharing a port is for --workers only: a second server started by mistake
                # on a busy port must fail, not silently take half the connections.
                ("grpc.so_reuseport", int(os.environ.get(WORKER_ENV) == "1")),
                # Calls gRPC has received but this process has not taken up yet: past the limit
                # (and, at random, past half of it) gRPC refuses new ones at once, in C, before
                # they cost any Python; the caller sees CANCELLED (gRPC's code, not ours).
                ("grpc.server.max_pending_requests", self.settings.max_pending_requests // 2),
                ("grpc.server.max_pending_requests_hard_limit", self.settings.max_pending_requests),
            ],
        )
        v1.add_to_server(self._v1, server, self._boundary)
        v2.add_to_server(self._v2, server, self._boundary)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        if self.settings.reflection:
            services = [v1.SERVICE_NAME, v2.SERVICE_NAME, health.SERVICE_NAME]
            reflection.enable_server_reflection([*services, reflection.SERVICE_NAME], server)
        return server

    async def change_repository(self, function: Callable[..., object], *args: Any) -> None:
        """Run a repository change off the event loop (loading is slow), one at a time, then
        bring the health statuses in line with what is served."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._loader, function, *args)
        finally:
            await self._update_health()

    def ready(self) -> bool:
        """Whether the server takes calls: its models loaded, and not stopping (V2's
        ServerReady, over gRPC and HTTP, as the health service says)."""
        return self.repository.ready and not self._draining

    async def control(self, action: str, name: str, timeout: float | None = None) -> None:
        """Load or unload model `name` (`Repository.load`/`unload`): in every worker of the
        server before returning, or raise what went wrong (naming a worker that did not
        within `timeout` seconds)."""
        if self._link is None:
            await self.change_repository(self._control_calls[action], name)
            return
        code, message = await self._link.call(action, name, timeout)
        if code != "OK":
            error = ServiceError(message)
            error.code = grpc.StatusCode[code]
            raise error

    async def _apply(self, action: str, name: str) -> tuple[str, str, bool]:
        """A control call the supervisor relays: (status name, message, whether `name` is
        now unloaded on request)."""
        try:
            await self.change_repository(self._control_calls[action], name)
        except Exception as exc:
            code = status(exc)
            if code is None:
                log.exception("%s %r failed", action, name)
            reply = (code.name, str(exc)) if code else ("INTERNAL", "see the server's log")
        else:
            reply = ("OK", "")
        return (*reply, name in self.repository.unloaded)

    async def _watch(self, seconds: float) -> None:
        """Rescan MODELS_DIR every `seconds`: new versions in, removed ones out."""
        while True:
            await asyncio.sleep(seconds)
            try:
                await self.change_repository(self.repository.sync)
            except Exception:  # keep watching: the next scan may succeed
                log.exception("rescanning %s failed", self.settings.models_dir)

    async def _update_health(self) -> None:
        """SERVING for the server and services when ready; per model while it is loaded, and
        NOT_SERVING for a model on disk that could not be loaded."""
        await self._set_health(SERVING if self.repository.ready else NOT_SERVING)
        names = set(self.repository.names)
        on_disk = {entry.name for entry in self.repository.index()}
        for name in (self._health_names | on_disk) - names:
            await self._health.set(name, NOT_SERVING)
        for name in names:
            await self._health.set(name, SERVING)
        self._health_names = names

    async def _set_health(self, status: int) -> None:
        """The server's and both services' status (each model's is set by `_update_health`)."""
        for name in ("", v1.SERVICE_NAME, v2.SERVICE_NAME):
            await self._health.set(name, status)

    def _tls_credentials(self) -> grpc.ServerCredentials | None:
        """TLS from the settings' PEM files (mutual TLS with a client CA), or None: plaintext."""
        settings = self.settings
        if settings.tls_cert is None or settings.tls_key is None:
            return None
        client_ca = settings.tls_client_ca
        return grpc.ssl_server_credentials(
            [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
            root_certificates=client_ca.read_bytes() if client_ca else None,
            require_client_auth=client_ca is not None,
        )

    def _tls_context(self) -> ssl.SSLContext | None:
        """The HTTP door's TLS, from the same files as gRPC's (`_tls_credentials`)."""
        settings = self.settings
        if settings.tls_cert is None or settings.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
        if settings.tls_client_ca is not None:
            context.load_verify_locations(settings.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _start_metrics(self) -> None:
        if self.settings.metrics_port < 0:
            return
        from prometheus_client import start_http_server

        try:
            self._metrics_server, _ = start_http_server(
                self.settings.metrics_port, self.settings.metrics_host
            )
        except OSError as exc:
            raise port_in_use(self.settings.metrics_port, "--metrics-port", exc) from None
        self.metrics_port = self._metrics_server.server_port

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING at once; keep answering for `drain_seconds` while load balancers
        move away; then refuse new calls and let in-flight ones finish in `grace` s."""
        await self._health.enter_graceful_shutdown()
        self._draining = True
        metrics.WORKERS.set(0)
        if self.settings.drain_seconds:
            log.info("NOT_SERVING; still answering for %.1f s", self.settings.drain_seconds)
            await asyncio.sleep(self.settings.drain_seconds)
        if self._watcher is not None:
            self._watcher.cancel()
        grace = self.settings.grace_seconds if grace is None else grace
        if self._grpc is not None:
            await self._grpc.stop(grace)
        if self._http is not None:
            await self._http.cleanup()  # calls in flight get --grace-seconds
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._loader.shutdown(wait=True, cancel_futures=True)
        if self._link is not None:
            await self._link.close()
        log.info("stopped")


def _address(host: str, port: int) -> str:
    """host:port, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
