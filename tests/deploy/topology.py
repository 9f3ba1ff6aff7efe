"""deploy/'s topology as local processes: convserve replicas, Envoy and Prometheus on loopback.

Envoy's and Prometheus's configurations are rendered from the files in deploy/: only addresses
change (the replicas are 127.0.0.1 ports instead of the DNS name `convserve`), so the routes,
retries, health checks, outlier detection and scrape jobs under test are the deployed ones:
Envoy's gRPC listener and cluster, and its HTTP listener and cluster (the replicas' HTTP doors).
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


# Envoy's listeners (by name) and the cluster each routes to, in deploy/envoy.yaml.
ENVOY_CLUSTERS = {"grpc": "convserve", "http": "convserve_http"}


def render_envoy(
    replica_ports: dict[str, list[int]], ports: dict[str, int], admin_port: int
) -> dict[str, Any]:
    """deploy/envoy.yaml on loopback: listener `name` on `ports[name]`, its cluster's
    replicas on `replica_ports[name]` (name: "grpc", "http")."""
    config: dict[str, Any] = yaml.safe_load((DEPLOY / "envoy.yaml").read_text())
    config["admin"]["address"] = _loopback(admin_port)
    listeners = {item["name"]: item for item in config["static_resources"]["listeners"]}
    clusters = {item["name"]: item for item in config["static_resources"]["clusters"]}
    assert set(listeners) == set(ENVOY_CLUSTERS) == set(ports) == set(replica_ports)
    assert set(clusters) == set(ENVOY_CLUSTERS.values())
    for name, cluster_name in ENVOY_CLUSTERS.items():
        listeners[name]["address"] = _loopback(ports[name])
        cluster = clusters[cluster_name]
        for key in ("dns_lookup_family", "dns_refresh_rate"):
            del cluster[key]
        cluster["type"] = "STATIC"
        endpoints = [{"endpoint": {"address": _loopback(p)}} for p in replica_ports[name]]
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
    """`convserve serve` on 127.0.0.1: gRPC on `port`, HTTP on `http_port`, /metrics on
    `metrics_port`."""

    command: list[str]
    port: int
    http_port: int
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
    target: str  # Envoy's gRPC listener: where gRPC clients call
    http: str  # Envoy's HTTP listener, http://127.0.0.1:PORT: where HTTP clients call
    envoy_admin: str
    prometheus: str

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query through Prometheus's HTTP API: the result vector."""
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        answer = json.loads(http_get(url))
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def healthy_replicas(self, cluster: str = "convserve") -> int:
        """How many replicas Envoy's health checks currently count as healthy in `cluster`
        (convserve: their gRPC ports; convserve_http: their HTTP ports)."""
        stats = http_get(f"{self.envoy_admin}/stats?filter=^cluster.{cluster}.membership_healthy$")
        return int(stats.split(":")[1])

    def all_healthy(self) -> bool:
        """Every replica healthy in each of Envoy's clusters."""
        return all(
            self.healthy_replicas(name) == len(self.replicas) for name in ENVOY_CLUSTERS.values()
        )


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
    """Start the replicas, Envoy and Prometheus; yield once Envoy sees every replica healthy
    (in both clusters: gRPC and HTTP)."""
    members: list[Replica] = []
    others: list[subprocess.Popen[bytes]] = []
    try:
        for index in range(replicas):
            port, http_port, metrics_port = free_port(), free_port(), free_port()
            command = [
                sys.executable, "-m", "convserve", "serve", "--host", "127.0.0.1",
                "--port", str(port), "--http-port", str(http_port), "--metrics-host", "127.0.0.1",
                "--metrics-port", str(metrics_port), "--models-dir", str(models_dir),
                "--default-model", "fashion", "--log-format", "json",
                "--drain-seconds", DRAIN_SECONDS,
                # Three replicas on this machine's 2 cores: each a 1-CPU container, one worker.
                "--workers", "1",
            ]  # fmt: skip
            log = workdir / f"convserve-{index}.log"
            members.append(Replica(command, port, http_port, metrics_port, log))

        envoy_port, envoy_http_port = free_port(), free_port()
        admin_port, prometheus_port = free_port(), free_port()
        envoy_config = workdir / "envoy.yaml"
        envoy_config.write_text(yaml.safe_dump(render_envoy(
            {"grpc": [m.port for m in members], "http": [m.http_port for m in members]},
            {"grpc": envoy_port, "http": envoy_http_port},
            admin_port,
        )))  # fmt: skip
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
            f"http://127.0.0.1:{envoy_http_port}",
            f"http://127.0.0.1:{admin_port}",
            f"http://127.0.0.1:{prometheus_port}",
        )

        def alive() -> bool:
            for process in [*others, *(member.process for member in members)]:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
            return True

        wait_until(lambda: alive() and cluster.all_healthy(),
                   "Envoy to see every replica healthy, over gRPC and HTTP")  # fmt: skip
        wait_until(lambda: "Ready" in http_get(f"{cluster.prometheus}/-/ready"), "Prometheus")
        yield cluster
    finally:
        for process in [*others, *(member.process for member in members)]:
            _stop(process)
