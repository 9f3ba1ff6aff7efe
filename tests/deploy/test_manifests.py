"""deploy/ checked statically (no container engine here) with the tools that deploy it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from client import Client
from tests.conftest import http_get
from tests.deploy.topology import DEPLOY, ENVOY, ROOT

BIN = Path(sys.executable).parent


def _run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=120, check=False
    )


def _yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _k8s(kind: str, name: str) -> dict[str, Any]:
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in _yaml_documents(path):
            if (doc["kind"], doc["metadata"]["name"]) == (kind, name):
                return doc
    raise KeyError(f"{kind}/{name}")


def _serve_args(args: list[str]) -> None:
    """`convserve serve` accepts these flags (argparse exits on an unknown one)."""
    from convserve.cli import build_parser

    build_parser(["serve"]).parse_args(["serve", *args])


def _settings_env(env: dict[str, str]) -> None:
    from service.settings import Settings

    names = {key.removeprefix("CONVSERVE_").lower() for key in env if key.startswith("CONVSERVE_")}
    assert names <= set(Settings.model_fields), names - set(Settings.model_fields)


# --- Envoy ---


def test_envoy_validates_the_config_and_rejects_a_broken_one(tmp_path: Path) -> None:
    done = _run(ENVOY, "--mode", "validate", "--config-path", DEPLOY / "envoy.yaml")
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr
    broken = tmp_path / "envoy.yaml"
    broken.write_text((DEPLOY / "envoy.yaml").read_text().replace("num_retries", "num_retrys"))
    assert _run(ENVOY, "--mode", "validate", "--config-path", broken).returncode != 0


def _route_for(path: str, routes: list[dict[str, Any]]) -> dict[str, Any]:
    for route in routes:
        match = route["match"]
        if (
            match.get("path") == path
            or ("prefix" in match and path.startswith(match["prefix"]))
            or ("safe_regex" in match and re.fullmatch(match["safe_regex"]["regex"], path))
        ):
            return dict(route["route"])
    raise AssertionError(f"no route for {path}")


def test_envoy_retries_every_idempotent_rpc_and_nothing_else() -> None:
    from convserve.api.pb.convserve.v1 import convserve_pb2
    from convserve.api.pb.inference import grpc_predict_v2_pb2

    config = yaml.safe_load((DEPLOY / "envoy.yaml").read_text())
    (listener,) = config["static_resources"]["listeners"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    (host,) = manager["route_config"]["virtual_hosts"]
    services = [
        *convserve_pb2.DESCRIPTOR.services_by_name.values(),
        *grpc_predict_v2_pb2.DESCRIPTOR.services_by_name.values(),
    ]
    paths = [f"/{s.full_name}/{m.name}" for s in services for m in s.methods]
    paths.append("/grpc.health.v1.Health/Check")
    for path in paths:
        route = _route_for(path, host["routes"])
        if path.endswith(("/RepositoryModelLoad", "/RepositoryModelUnload")):
            assert "retry_policy" not in route, path  # changes state
        elif path.endswith("/ModelStreamInfer"):
            assert route["timeout"] == "0s" and "retry_policy" not in route, path
        else:
            retry_on = set(route["retry_policy"]["retry_on"].split(","))
            assert {"unavailable", "reset", "connect-failure"} <= retry_on, path


def test_envoy_finds_the_replicas_the_k8s_service_and_compose_name() -> None:
    config = yaml.safe_load((DEPLOY / "envoy.yaml").read_text())
    (cluster,) = config["static_resources"]["clusters"]
    (group,) = cluster["load_assignment"]["endpoints"]
    (endpoint,) = group["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    service = _k8s("Service", address["address"])
    assert service["spec"]["clusterIP"] == "None"  # headless: DNS gives every pod
    assert address["port_value"] in [port["port"] for port in service["spec"]["ports"]]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert address["address"] in compose["services"]
    assert cluster["health_checks"][0]["grpc_health_check"] == {}  # the whole server's health


# --- Prometheus and Grafana ---


def test_promtool_accepts_the_prometheus_config() -> None:
    done = _run("promtool", "check", "config", DEPLOY / "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def _dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/convserve.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_dashboard_queries_parse_and_name_metrics_the_server_exports(
    server: Any, tmp_path: Path
) -> None:
    queries = _dashboard_queries()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": q.replace("$__rate_interval", "1m")}
        for i, q in enumerate(queries)
    ]}]}  # fmt: skip
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    done = _run("promtool", "check", "rules", tmp_path / "rules.yml")
    assert done.returncode == 0, done.stdout + done.stderr

    with Client(server.target) as client:  # labelled series appear with their first request
        client.predict(np.zeros((1, 28, 28), np.uint8))
    exported = set(re.findall(r"^([a-z_]+)[{ ]", http_get(server.metrics_url), re.M))
    pattern = r"\b((?:convserve|process)_[a-z_]+)"
    named = {name for query in queries for name in re.findall(pattern, query)}
    assert len(named) >= 8 and named <= exported, named - exported


def test_grafana_provisioning_points_at_the_dashboard_and_datasource() -> None:
    datasources = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text()
    )["datasources"]
    dashboard = json.loads((DEPLOY / "grafana/dashboards/convserve.json").read_text())
    uids = {panel["datasource"]["uid"] for panel in dashboard["panels"]}
    assert uids == {datasources[0]["uid"]}
    (provider,) = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/convserve.yaml").read_text()
    )["providers"]
    grafana = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["grafana"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]


# --- compose, Dockerfile ---


def test_compose_file_matches_the_compose_spec_and_its_files_exist() -> None:
    done = _run(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec",
                DEPLOY / "compose.yaml")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), source
    convserve = compose["services"]["convserve"]
    assert convserve["deploy"]["replicas"] == 3
    assert (DEPLOY / convserve["build"]["context"] / convserve["build"]["dockerfile"]).is_file()
    _settings_env(convserve["environment"])
    envoy_wheel = _run(ENVOY, "--version").stdout
    assert compose["services"]["envoy"]["image"].split(":v")[1] in envoy_wheel


def _dockerfile() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]  # type: ignore[misc]


def test_dockerfile_runs_pinned_as_non_root_with_a_health_check(server: Any) -> None:
    instructions = _dockerfile()
    final = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]
    ops = {op: arg for op, arg in final}
    assert ops["USER"].split(":")[0] not in {"0", "root"}
    assert json.loads(ops["ENTRYPOINT"]) == ["convserve", "serve"]  # exec form: gets SIGTERM
    _settings_env(dict(re.findall(r"(CONVSERVE_\w+)=(\S+)", ops["ENV"])))
    base = next(arg for op, arg in instructions if op == "ARG").split("=")[1]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base

    copied = set()
    for op, arg in instructions:
        if op == "COPY" and not arg.startswith("--from"):
            for source in arg.split()[:-1]:
                assert (ROOT / source).exists(), source
                copied.add(source)
        if op == "RUN" and "pip install" in arg:
            assert "--constraint constraints.txt" in arg  # the versions the tests ran with
    # The server and the health check's client stand on the core alone: no training/.
    assert {"convserve", "client", "service"} <= copied and "training" not in copied

    # The HEALTHCHECK's own command, aimed at a real server.
    command = json.loads(ops["HEALTHCHECK"].split(" CMD ", 1)[1])
    assert command[:2] == ["convserve", "health"]
    target = command.index("--target") + 1
    command[target] = server.target
    done = _run(BIN / "convserve", *command[1:])
    assert (done.returncode, done.stdout.strip()) == (0, "SERVING"), done.stderr
    command[target] = "127.0.0.1:1"  # nothing listens: unhealthy
    assert _run(BIN / "convserve", *command[1:]).returncode != 0


# --- Kubernetes ---


def test_kubernetes_validate_accepts_every_manifest() -> None:
    manifests = sorted((DEPLOY / "k8s").glob("*.yaml"))
    done = _run(BIN / "kubernetes-validate", "--strict", *manifests)
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = {doc["kind"] for path in manifests for doc in _yaml_documents(path)}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds


def test_the_deployment_probes_grpc_health_runs_non_root_and_outlives_its_drain() -> None:
    deployment = _k8s("Deployment", "convserve")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    _serve_args(container["args"])
    ports = {port["containerPort"] for port in container["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] in ports, probe
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    args = dict(zip(container["args"][::2], container["args"][1::2], strict=True))
    drain, grace = float(args["--drain-seconds"]), float(args["--grace-seconds"])
    assert pod["terminationGracePeriodSeconds"] > drain + grace


def test_kustomization_puts_deploy_envoy_yaml_in_the_envoy_config_map() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (DEPLOY / resource).is_file(), resource
    (generator,) = kustomization["configMapGenerator"]
    assert generator["files"] == ["envoy.yaml"]
    volumes = _k8s("Deployment", "envoy")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": generator["name"]}} in volumes


def _cpus(quantity: str | float) -> float:
    """A Kubernetes CPU quantity ("2", "1500m") or a compose `cpus` in CPUs."""
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_worker_count_matches_the_cpu_limit() -> None:
    """One worker process per CPU: more share the limit's CPU time, fewer leave it idle."""
    (container,) = _k8s("Deployment", "convserve")["spec"]["template"]["spec"]["containers"]
    env = {var["name"]: var["value"] for var in container["env"]}
    resources = container["resources"]
    assert _cpus(resources["limits"]["cpu"]) == int(env["CONVSERVE_WORKERS"])
    assert _cpus(resources["requests"]["cpu"]) == int(env["CONVSERVE_WORKERS"])
    convserve = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["convserve"]
    cpus = _cpus(convserve["deploy"]["resources"]["limits"]["cpus"])
    assert cpus == int(convserve["environment"]["CONVSERVE_WORKERS"])
