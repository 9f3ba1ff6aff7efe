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
from tests.deploy.topology import DEPLOY, ENVOY, ENVOY_CLUSTERS, ROOT

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


def _envoy() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((DEPLOY / "envoy.yaml").read_text())
    return config


def _envoy_listeners() -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in _envoy()["static_resources"]["listeners"]}


def _envoy_clusters() -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in _envoy()["static_resources"]["clusters"]}


def _envoy_routes(listener: str) -> list[dict[str, Any]]:
    manager = _envoy_listeners()[listener]["filter_chains"][0]["filters"][0]["typed_config"]
    (host,) = manager["route_config"]["virtual_hosts"]
    routes: list[dict[str, Any]] = host["routes"]
    assert {route["route"]["cluster"] for route in routes} == {ENVOY_CLUSTERS[listener]}
    return routes


def _envoy_port(listener: str) -> int:
    port: int = _envoy_listeners()[listener]["address"]["socket_address"]["port_value"]
    return port


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

    routes = _envoy_routes("grpc")
    services = [
        *convserve_pb2.DESCRIPTOR.services_by_name.values(),
        *grpc_predict_v2_pb2.DESCRIPTOR.services_by_name.values(),
    ]
    paths = [f"/{s.full_name}/{m.name}" for s in services for m in s.methods]
    paths.append("/grpc.health.v1.Health/Check")
    for path in paths:
        route = _route_for(path, routes)
        if path.endswith(("/RepositoryModelLoad", "/RepositoryModelUnload")):
            assert "retry_policy" not in route, path  # changes state
        elif path.endswith("/ModelStreamInfer"):
            assert route["timeout"] == "0s" and "retry_policy" not in route, path
        else:
            retry_on = set(route["retry_policy"]["retry_on"].split(","))
            assert {"unavailable", "reset", "connect-failure"} <= retry_on, path


class _Routes:
    """Collects the HTTP door's routes, as `service.http.door.Door` would serve them."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, str]] = []  # (path, the gRPC method it stands for)

    def add(self, http_method: str, path: str, route: Any) -> None:
        path = path.replace("{model}", "fashion").replace("{version}", "1")
        self.routes.append((path, route.grpc_method))


class _AnyServicer:
    def __getattr__(self, name: str) -> Any:
        return None


def test_envoy_http_retries_every_idempotent_route_and_nothing_else() -> None:
    """Every route of the replicas' HTTP door (REST and Connect), through Envoy's HTTP
    listener: retried unless it loads or unloads a model."""
    from convserve.api.pb.convserve.v1 import convserve_pb2
    from convserve.api.pb.inference import grpc_predict_v2_pb2
    from service.http import connect, rest

    door = _Routes()
    rest.add_routes(door, _AnyServicer())  # type: ignore[arg-type]
    for pb in (convserve_pb2, grpc_predict_v2_pb2):
        for service in pb.DESCRIPTOR.services_by_name.values():
            connect.add_routes(door, service, _AnyServicer())  # type: ignore[arg-type]
    infer = ("/v2/models/fashion/infer", "/inference.GRPCInferenceService/ModelInfer")
    assert len(door.routes) > 20 and infer in door.routes
    routes = _envoy_routes("http")
    for path, method in door.routes:
        route = _route_for(path, routes)
        if method.endswith(("/RepositoryModelLoad", "/RepositoryModelUnload")):
            assert "retry_policy" not in route, path  # changes state
        else:
            policy = route["retry_policy"]
            retry_on = set(policy["retry_on"].split(","))
            assert {"reset", "connect-failure", "retriable-status-codes"} <= retry_on, path
            assert policy["retriable_status_codes"] == [503], path  # UNAVAILABLE


def test_envoy_finds_the_replicas_the_k8s_service_and_compose_name() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    clusters = _envoy_clusters()
    assert set(clusters) == set(ENVOY_CLUSTERS.values())
    for cluster in clusters.values():
        (group,) = cluster["load_assignment"]["endpoints"]
        (endpoint,) = group["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]
        service = _k8s("Service", address["address"])
        assert service["spec"]["clusterIP"] == "None"  # headless: DNS gives every pod
        assert address["port_value"] in [port["port"] for port in service["spec"]["ports"]]
        assert address["address"] in compose["services"]
        assert str(address["port_value"]) in compose["services"][address["address"]]["expose"]
    # The whole server's health: grpc.health.v1, and the Open Inference Protocol's readiness.
    assert clusters["convserve"]["health_checks"][0]["grpc_health_check"] == {}
    (check,) = clusters["convserve_http"]["health_checks"]
    assert check["http_health_check"] == {"path": "/v2/health/ready"}


def test_envoy_listeners_are_the_ports_of_its_pod_service_and_compose() -> None:
    """Each Envoy listener (grpc, http) is a named port of Envoy's pod, its Service, and
    published by compose: gRPC clients on 50051, HTTP clients on 8080."""
    (container,) = _k8s("Deployment", "envoy")["spec"]["template"]["spec"]["containers"]
    pod = {port["name"]: port["containerPort"] for port in container["ports"]}
    service = {port["name"]: port for port in _k8s("Service", "envoy")["spec"]["ports"]}
    published = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["envoy"]["ports"]
    outside = {int(inside): int(host) for host, inside in (p.split(":") for p in published)}
    public = {"grpc": GRPC_PORT, "http": HTTP_PORT}
    assert set(_envoy_listeners()) == set(public)
    for name, port in public.items():
        assert pod[name] == _envoy_port(name)
        assert (service[name]["port"], service[name]["targetPort"]) == (port, name)
        assert outside[_envoy_port(name)] == port
    assert service["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    assert service["http"]["appProtocol"] == "http"


# --- Prometheus and Grafana ---


def test_promtool_accepts_the_prometheus_config() -> None:
    done = _run("promtool", "check", "config", DEPLOY / "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def _dashboard_panels() -> list[dict[str, Any]]:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/convserve.json").read_text())
    panels: list[dict[str, Any]] = dashboard["panels"]
    return panels


def _dashboard_queries() -> list[str]:
    return [target["expr"] for panel in _dashboard_panels() for target in panel["targets"]]


def _promtool_test(
    tmp_path: Path, series: dict[str, str], expr: str, expected: list[tuple[str, float]]
) -> None:
    """`promtool test rules`: `expr` at 4m over `series` (15 s apart) gives exactly `expected`,
    (labels, value) pairs."""
    test = {"evaluation_interval": "15s", "tests": [{
        "interval": "15s",
        "input_series": [{"series": name, "values": values} for name, values in series.items()],
        "promql_expr_test": [{
            "expr": expr.replace("$__rate_interval", "1m"), "eval_time": "4m",
            "exp_samples": [{"labels": labels, "value": value} for labels, value in expected],
        }],
    }]}  # fmt: skip
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    done = _run("promtool", "test", "rules", tmp_path / "test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


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


def test_dashboard_model_versions_are_the_share_of_every_worker_serving_them(
    tmp_path: Path,
) -> None:
    """convserve_model_loaded counts a replica's workers serving a version, convserve_workers
    its workers: the panel is 1 only when every worker of every replica serves the version."""
    (panel,) = [p for p in _dashboard_panels() if "convserve_model_loaded" in str(p["targets"])]
    (target,) = panel["targets"]
    assert "convserve_workers" in target["expr"] and panel["description"]
    assert {"model", "version"} <= set(re.findall(r"{{(\w+)}}", target["legendFormat"]))
    # Two replicas of two workers: version 1 on all four, version 2 on three (a rollout).
    series = {'convserve_workers{instance="a:8000"}': "2x20",
              'convserve_workers{instance="b:8000"}': "2x20"}  # fmt: skip
    for instance, v2 in (("a", 2), ("b", 1)):
        for version, count in (("1", 2), ("2", v2)):
            labels = f'instance="{instance}:8000",model="fashion",version="{version}"'
            series[f"convserve_model_loaded{{{labels}}}"] = f"{count}x20"
    _promtool_test(tmp_path, series, target["expr"], [
        ('{model="fashion",version="1"}', 1.0), ('{model="fashion",version="2"}', 0.75),
    ])  # fmt: skip


def test_dashboard_memory_and_cpu_draw_each_worker_of_each_replica(tmp_path: Path) -> None:
    """process_* carry a `worker` label ("0", "1", ..., "supervisor") on the one port of a
    replica: one series, and one legend, per (instance, worker)."""
    panels = [p for p in _dashboard_panels() if "process_" in str(p["targets"])]
    names = {
        name for p in panels for t in p["targets"] for name in re.findall(r"process_\w+", t["expr"])
    }
    assert names == {"process_resident_memory_bytes", "process_cpu_seconds_total"}
    processes = [(instance, worker) for instance in ("a:8000", "b:8000")
                 for worker in ("0", "1", "supervisor")]  # fmt: skip
    for panel in panels:
        (target,) = panel["targets"]
        assert {"instance", "worker"} <= set(re.findall(r"{{(\w+)}}", target["legendFormat"]))
        assert panel["description"]
        (name,) = re.findall(r"process_\w+", target["expr"])
        counter = "rate(" in target["expr"]
        series, expected = {}, []
        for rank, (instance, worker) in enumerate(processes, 1):
            labels = f'instance="{instance}",job="convserve",worker="{worker}"'
            # A counter growing by `rank` a second, or a gauge holding `rank` MB.
            series[f"{name}{{{labels}}}"] = f"0+{15 * rank}x20" if counter else f"{rank}e6x20"
            shown = labels if counter else f'__name__="{name}",{labels}'
            expected.append((f"{{{shown}}}", float(rank if counter else rank * 1e6)))
        _promtool_test(tmp_path, series, target["expr"], expected)


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


# --- one metrics port per replica ---

# The supervisor serves /metrics for every worker of a replica on this one port
# (service/metrics.py): no port per worker anywhere.
METRICS_PORT = 8000
GRPC_PORT = 50051
HTTP_PORT = 8080


def test_the_server_defaults_to_the_ports_the_image_exposes() -> None:
    from service.settings import Settings

    assert Settings.model_fields["port"].default == GRPC_PORT
    assert Settings.model_fields["http_port"].default == HTTP_PORT
    assert Settings.model_fields["metrics_port"].default == METRICS_PORT
    exposed = [arg.split() for op, arg in _dockerfile() if op == "EXPOSE"]
    assert [sorted(map(int, ports)) for ports in exposed] == [[METRICS_PORT, HTTP_PORT, GRPC_PORT]]
    env = dict(
        re.findall(r"(CONVSERVE_\w+)=(\S+)", str([a for op, a in _dockerfile() if op == "ENV"]))
    )
    assert int(env.get("CONVSERVE_METRICS_PORT", METRICS_PORT)) == METRICS_PORT
    assert int(env.get("CONVSERVE_HTTP_PORT", HTTP_PORT)) == HTTP_PORT


def test_compose_exposes_grpc_http_and_the_one_metrics_port() -> None:
    convserve = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["convserve"]
    assert int(convserve["environment"]["CONVSERVE_WORKERS"]) > 1  # several workers, one port
    assert int(convserve["environment"]["CONVSERVE_METRICS_PORT"]) == METRICS_PORT
    assert int(convserve["environment"].get("CONVSERVE_HTTP_PORT", HTTP_PORT)) == HTTP_PORT
    assert sorted(map(int, convserve["expose"])) == [METRICS_PORT, HTTP_PORT, GRPC_PORT]


def test_kubernetes_pod_and_service_expose_one_metrics_port_the_annotation_names() -> None:
    template = _k8s("Deployment", "convserve")["spec"]["template"]
    (container,) = template["spec"]["containers"]
    env = {var["name"]: var["value"] for var in container["env"]}
    assert int(env["CONVSERVE_WORKERS"]) > 1  # several workers, one port
    assert int(env["CONVSERVE_METRICS_PORT"]) == METRICS_PORT
    assert int(env.get("CONVSERVE_HTTP_PORT", HTTP_PORT)) == HTTP_PORT
    ports = sorted((port["name"], port["containerPort"]) for port in container["ports"])
    assert ports == [("grpc", GRPC_PORT), ("http", HTTP_PORT), ("metrics", METRICS_PORT)]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)
    service = _k8s("Service", "convserve")["spec"]["ports"]
    assert sorted((port["name"], port["port"], port["targetPort"]) for port in service) == [
        ("grpc", GRPC_PORT, "grpc"), ("http", HTTP_PORT, "http"),
        ("metrics", METRICS_PORT, "metrics"),
    ]  # fmt: skip
    assert {port["name"]: port.get("appProtocol") for port in service} == {
        "grpc": "kubernetes.io/h2c", "http": "http", "metrics": None,
    }  # fmt: skip


def test_prometheus_scrapes_each_replica_once_on_the_metrics_port() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "convserve"]
    assert job.get("metrics_path", "/metrics") == "/metrics" and "static_configs" not in job
    (discovery,) = job["dns_sd_configs"]  # one target per replica, not one per worker
    assert (discovery["type"], discovery["port"]) == ("A", METRICS_PORT)
    # The name is the compose service's and the headless Service's: every replica.
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    for name in discovery["names"]:
        assert name in compose
        service = _k8s("Service", name)
        assert service["spec"]["clusterIP"] == "None"
        assert METRICS_PORT in [port["port"] for port in service["spec"]["ports"]]


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
