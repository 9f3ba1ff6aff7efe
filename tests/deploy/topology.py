"""deploy/'s topology as local processes: convserve replicas, Envoy and Prometheus on loopback.

Envoy's and Prometheus's configurations are rendered from the files in deploy/: only addresses
change (the replicas are 127.0.0.1 ports instead of the DNS name `convserve`), so the routes,
retries, health checks, outlier detection and scrape jobs under test are the deployed ones.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import free_port, http_get

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ENVOY = Path(sys.executable).with_name("envoy")
DRAIN_SECONDS = "5"  # as the container image sets it (deploy/Dockerfile)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if condition():
                return
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def _loopback(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def render_envoy(replica_ports: list[int], port: int, admin_port: int) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((DEPLOY / "envoy.yaml").read_text())
    config["admin"]["address"] = _loopback(admin_port)
    (listener,) = config["static_resources"]["listeners"]
    listener["address"] = _loopback(port)
    (cluster,) = config["static_resources"]["clusters"]
    for key in ("dns_lookup_family", "dns_refresh_rate"):
        del cluster[key]
    cluster["type"] = "STATIC"
    endpoints = [{"endpoint": {"address": _loopback(p)}} for p in replica_ports]
    cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": endpoints}]
    return config


def render_prometheus(metrics_ports: list[int], envoy_admin_port: int) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    targets = {
        "convserve": [f"127.0.0.1:{port}" for port in metrics_ports],
        "envoy": [f"127.0.0.1:{envoy_admin_port}"],
    }
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": targets[job["job_name"]]}]
    return config


@dataclass
class Replica:
    """`convserve serve` on 127.0.0.1: gRPC on `port`, /metrics on `metrics_port`."""

    command: list[str]
    port: int
    metrics_port: int
    log: Path
    process: subprocess.Popen[bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.start()

    def start(self) -> None:
        """(Re)start the process, as an orchestrator restarts a dead replica."""
        self.process = _start(self.command, self.log)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


@dataclass
class Cluster:
    replicas: list[Replica]
    target: str  # Envoy's listener: where clients call
    envoy_admin: str
    prometheus: str

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query through Prometheus's HTTP API: the result vector."""
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        answer = json.loads(http_get(url))
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def healthy_replicas(self) -> int:
        """How many replicas Envoy's health checks currently count as healthy."""
        stats = http_get(f"{self.envoy_admin}/stats?filter=^cluster.convserve.membership_healthy$")
        return int(stats.split(":")[1])


def _start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def running(models_dir: Path, workdir: Path, replicas: int = 3) -> Iterator[Cluster]:
    """Start the replicas, Envoy and Prometheus; yield once Envoy sees every replica healthy."""
    members: list[Replica] = []
    others: list[subprocess.Popen[bytes]] = []
    try:
        for index in range(replicas):
            port, metrics_port = free_port(), free_port()
            command = [
                sys.executable, "-m", "convserve", "serve", "--host", "127.0.0.1",
                "--port", str(port), "--metrics-host", "127.0.0.1",
                "--metrics-port", str(metrics_port), "--models-dir", str(models_dir),
                "--default-model", "fashion", "--log-format", "json",
                "--drain-seconds", DRAIN_SECONDS,
                # Three replicas on this machine's 2 cores: each a 1-CPU container, one worker.
                "--workers", "1",
            ]  # fmt: skip
            members.append(Replica(command, port, metrics_port, workdir / f"convserve-{index}.log"))

        envoy_port, admin_port, prometheus_port = free_port(), free_port(), free_port()
        envoy_config = workdir / "envoy.yaml"
        envoy_config.write_text(yaml.safe_dump(render_envoy([m.port for m in members],
                                                             envoy_port, admin_port)))  # fmt: skip
        others.append(_start(
            [str(ENVOY), "--config-path", str(envoy_config), "--use-dynamic-base-id",
             "--log-level", "warn"],
            workdir / "envoy.log",
        ))  # fmt: skip
        prometheus_config = workdir / "prometheus.yml"
        prometheus_config.write_text(
            yaml.safe_dump(render_prometheus([m.metrics_port for m in members], admin_port))
        )
        others.append(_start(
            ["prometheus",
             f"--config.file={prometheus_config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}"],
            workdir / "prometheus.log",
        ))  # fmt: skip

        cluster = Cluster(
            members,
            f"127.0.0.1:{envoy_port}",
            f"http://127.0.0.1:{admin_port}",
            f"http://127.0.0.1:{prometheus_port}",
        )

        def alive() -> bool:
            for process in [*others, *(member.process for member in members)]:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
            return True

        wait_until(lambda: alive() and cluster.healthy_replicas() == replicas,
                   "Envoy to see every replica healthy")  # fmt: skip
        wait_until(lambda: "Ready" in http_get(f"{cluster.prometheus}/-/ready"), "Prometheus")
        yield cluster
    finally:
        for process in [*others, *(member.process for member in members)]:
            _stop(process)
