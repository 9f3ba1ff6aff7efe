"""deploy/kserve/ without a cluster: each KServe object against KServe's own CRD schema (unknown
fields are errors), the InferenceService selecting the runtime, and the runtime container's own
args, rendered for a name as KServe renders them, starting the server on each layout KServe
mounts at /mnt/models, with tritonclient inferring by that name."""

from __future__ import annotations

import contextlib
import copy
import functools
import gzip
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import yaml

from client import Client
from convserve.fashion_mnist import Dataset
from tests.conftest import free_port
from tests.deploy.topology import DEPLOY

KSERVE = DEPLOY / "kserve"
CRDS = Path(__file__).with_name("kserve_crds")
BIN = Path(sys.executable).parent
NAME = "boots"  # the InferenceService's name, as KServe renders {{.Name}}


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _objects() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, doc) for path in sorted(KSERVE.glob("*.yaml")) for doc in _documents(path)]


@functools.cache
def _schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) → the CRD's openAPIV3Schema made strict (`_strict`), for each
    served version."""
    schemas = {}
    for path in sorted(CRDS.glob("*.yaml.gz")):
        crd = yaml.safe_load(gzip.decompress(path.read_bytes()))
        for version in crd["spec"]["versions"]:
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            schemas[key] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


def _strict(schema: Any) -> Any:
    """The schema with unknown fields as errors, as `kubectl apply --validate=strict` has
    them: every object with properties and no other way to take fields takes no other."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    if (
        schema.get("type") == "object"
        and "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        strict["additionalProperties"] = False
    return strict


def _problems(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(_schemas()[(document["apiVersion"], document["kind"])])
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(document)]


def _one(kind: str, file: str) -> dict[str, Any]:
    (document,) = [doc for name, doc in _objects() if (name, doc["kind"]) == (file, kind)]
    return document


def _runtime() -> dict[str, Any]:
    return _one("ClusterServingRuntime", "clusterservingruntime.yaml")


def _container() -> dict[str, Any]:
    (container,) = _runtime()["spec"]["containers"]
    return dict(container)


def _flag(args: list[str], name: str) -> str:
    """The value of the last `--name=value` in args (the one argparse keeps)."""
    values = [arg.split("=", 1)[1] for arg in args if arg.startswith(f"--{name}=")]
    assert values, f"--{name} not in {args}"
    return values[-1]


ISVCS = ["inferenceservice.yaml", "inferenceservice-standard.yaml"]


def test_every_kserve_object_is_valid_against_kserves_own_crd() -> None:
    kserve = [(name, doc) for name, doc in _objects() if doc["apiVersion"].startswith("serving.")]
    assert sorted({(doc["kind"], name) for name, doc in kserve}) == [
        ("ClusterServingRuntime", "clusterservingruntime.yaml"),
        ("InferenceService", "inferenceservice-standard.yaml"),
        ("InferenceService", "inferenceservice.yaml"),
    ]
    for name, document in kserve:
        assert _problems(document) == [], name
    # The check means something: a misspelt field, deep or not, is an error.
    for path, typo in ((["spec", "predictor", "model"], "storageURI"), (["spec"], "containrs")):
        broken = copy.deepcopy(_one("InferenceService", "inferenceservice.yaml"))
        if path == ["spec"]:
            broken = copy.deepcopy(_runtime())
        node = broken
        for key in path:
            node = node[key]
        node[typo] = "x"
        assert any(f"'{typo}' was unexpected" in problem for problem in _problems(broken))


def test_the_other_objects_pass_kubernetes_validate(tmp_path: Path) -> None:
    others = [doc for _, doc in _objects() if not doc["apiVersion"].startswith("serving.")]
    assert {doc["kind"] for doc in others} == {"PodDisruptionBudget"}
    path = tmp_path / "others.yaml"
    path.write_text(yaml.safe_dump_all(others))
    done = subprocess.run([BIN / "kubernetes-validate", "--strict", path], capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("file", ISVCS)
def test_the_inferenceservice_selects_the_runtime_and_agrees_with_it(file: str) -> None:
    """As KServe picks a runtime: the model format (autoSelect) and the protocol; and the
    numbers both sides must share."""
    isvc = _one("InferenceService", file)
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    runtime = _runtime()["spec"]
    formats = [
        f for f in runtime["supportedModelFormats"] if f["name"] == model["modelFormat"]["name"]
    ]
    assert formats and all(f["autoSelect"] for f in formats)
    assert model["protocolVersion"] in runtime["protocolVersions"]
    assert "runtime" not in model  # chosen by format, as autoSelect means
    # KServe appends the InferenceService's args to the runtime's: the last value wins.
    args = _container()["args"] + model.get("args", [])
    assert predictor["containerConcurrency"] == int(_flag(args, "max-concurrent-requests"))
    (h2c,) = [p for p in _container()["ports"] if p["name"] == "h2c"]
    assert h2c["containerPort"] == int(_flag(args, "port"))
    assert _container()["readinessProbe"]["grpc"]["port"] == int(_flag(args, "port"))
    assert runtime["annotations"]["prometheus.kserve.io/port"] == _flag(args, "metrics-port")
    assert _flag(args, "models-dir") == "/mnt/models"
    assert _flag(args, "model-name") == "{{.Name}}"
    if "ports" in model:  # Standard mode: the HTTP port too, gRPC first (the Service's 80)
        assert [p["name"] for p in model["ports"]] == ["h2c", "http1"]
        assert model["ports"][1]["containerPort"] == int(_flag(args, "http-port"))
    (budget,) = [
        doc for name, doc in _objects() if name == file and doc["kind"] != "InferenceService"
    ]
    labels = budget["spec"]["selector"]["matchLabels"]
    assert labels == {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"]}


# --- the runtime's own args on each layout -------------------------------------------------


def _layout(kind: str, models_dir: Path, root: Path) -> Path:
    """/mnt/models as KServe fills it: one version's files, a model's versions, a repository."""
    mount = root / "mnt" / "models"
    if kind == "version":
        shutil.copytree(models_dir / "fashion" / "1", mount)
    elif kind == "model":
        for version in ("1", "2"):  # the same model written twice
            shutil.copytree(models_dir / "fashion" / "1", mount / version)
            _set_version(mount / version, int(version))
    else:
        for name in ("fashion", "cam"):
            shutil.copytree(models_dir / name / "1", mount / name / "1")
    return mount


def _set_version(version_dir: Path, version: int) -> None:
    metadata = json.loads((version_dir / "metadata.json").read_text())
    (version_dir / "metadata.json").write_text(json.dumps({**metadata, "version": version}))


def _rendered(mount: Path, ports: dict[str, int], *extra: str) -> list[str]:
    """The runtime container's args with {{.Name}} rendered, /mnt/models at `mount` and the
    ports free ones here, then `extra` as an InferenceService's args (appended)."""
    values = {"models-dir": str(mount), **{name: str(port) for name, port in ports.items()}}
    args = []
    for arg in _container()["args"]:
        flag = arg.split("=", 1)[0].removeprefix("--")
        arg = arg.replace("{{.Name}}", NAME)
        args.append(f"--{flag}={values[flag]}" if flag in values else arg)
    return [*args, *extra]


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}  # fmt: skip


@contextlib.contextmanager
def _started(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`convserve serve` (the image's entrypoint) with `args`, until it serves gRPC."""
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "service", *args], stderr=out)
    try:
        yield process
    finally:
        process.terminate()
        process.wait(30)


def _serving(target: str, process: subprocess.Popen[bytes], log: Path, name: str) -> None:
    """Until the readiness probe (gRPC health) says SERVING for `name`."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        with contextlib.suppress(Exception), Client(target, retries=0, timeout=2) as client:
            if client.health(name) == "SERVING":
                return
        time.sleep(0.1)
    pytest.fail(f"not serving {name} within 120 s: {log.read_text()}")


TRITON = """
import json, sys
import numpy as np
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from convserve.fashion_mnist import load

target, http, name = sys.argv[1:4]
images = load("test", limit=4).images
answers = {}
for kind, module, where in (("grpc", triton, target), ("http", triton_http, http)):
    client = module.InferenceServerClient(where)
    tensor = module.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    result = client.infer(name, [tensor])
    answers[kind] = {
        "ready": client.is_model_ready(name),
        "model_name": result.get_response()["model_name"] if kind == "http"
        else result.get_response().model_name,
        "probabilities": result.as_numpy("probabilities").tolist(),
    }
print(json.dumps(answers))
"""


def _triton(target: str, http_port: int, name: str) -> dict[str, Any]:
    """tritonclient, gRPC and HTTP, in a process of its own (its stubs and ours both define
    the `inference` package)."""
    done = subprocess.run([sys.executable, "-c", TRITON, target, f"127.0.0.1:{http_port}", name],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    answers: dict[str, Any] = json.loads(done.stdout)
    return answers


@pytest.mark.parametrize(
    ("layout", "served"),
    [
        ("version", {NAME: (1,)}),
        ("model", {NAME: (2,)}),  # the latest, as the default version policy says
        ("repository", {"fashion": (1,), "cam": (1,)}),
    ],
)
def test_the_runtime_args_serve_each_layout_kserve_mounts(
    layout: str, served: dict[str, tuple[int, ...]], models_dir: Path, tmp_path: Path,
    test_images: Dataset,
) -> None:  # fmt: skip
    mount = _layout(layout, models_dir, tmp_path)
    before = _tree(mount)
    mount.chmod(0o555)  # read-only, as KServe mounts it (root could still write: checked below)
    ports = {"port": free_port(), "http-port": free_port(), "metrics-port": free_port()}
    args = _rendered(mount, ports, "--max-concurrent-requests=64", "--poll-seconds=0.5")
    target = f"127.0.0.1:{ports['port']}"
    log = tmp_path / "server.log"
    with _started(args, log) as process:
        first = next(iter(served))
        _serving(target, process, log, first)
        with Client(target) as client:
            listed = {model.name: model.versions for model in client.list_models()}
            assert listed == served
            expected = client.predict(test_images.images[:4], model=first).probabilities
        answers = _triton(target, ports["http-port"], first)
        started = [line for line in log.read_text().splitlines() if "server: serving" in line]
        print(f"\n{layout}: convserve serve {' '.join(args)}\n  {started[-1]}")
        for kind in ("grpc", "http"):
            assert answers[kind]["ready"] and answers[kind]["model_name"] == first, kind
            np.testing.assert_allclose(answers[kind]["probabilities"], expected, atol=1e-6)
        if layout == "model":  # a new version in the folder goes live: hot reload on a PVC
            mount.chmod(0o755)
            shutil.copytree(mount / "1", mount / "3")
            _set_version(mount / "3", 3)
            before = _tree(mount)
            deadline = time.monotonic() + 30
            with Client(target) as client:
                while client.metadata(model=NAME).versions != (3,) and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert client.predict(test_images.images[:1], model=NAME).version == 3
    assert _tree(mount) == before  # the server wrote nothing under /mnt/models
    assert process.returncode == 0, log.read_text()


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda mount: mount.mkdir(parents=True), "holds no model in any layout"),
        (lambda mount: None, "does not exist"),
        (lambda mount: (mount.mkdir(parents=True), (mount / "model.onnx").write_bytes(b"x")),
         "holds no model in any layout"),
    ],
    ids=["empty", "missing", "a-bare-onnx-file"],
)  # fmt: skip
def test_a_mount_in_no_layout_is_one_line_and_exit_2(make: Any, said: str, tmp_path: Path) -> None:
    mount = tmp_path / "mnt" / "models"
    make(mount)
    ports = {"port": free_port(), "http-port": free_port(), "metrics-port": free_port()}
    done = subprocess.run([sys.executable, "-m", "service", *_rendered(mount, ports)],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"convserve serve: error: --models-dir {mount} {said} to serve as ")
    assert "one version's files (metadata.json" in line and "repository (NAME/VERSION/)" in line


def test_the_runtime_runs_the_image_deploy_builds_as_its_user() -> None:
    """The args above are given to `python -m service`: the image's entrypoint is that
    command, and the runtime names the image and user deploy/ builds and runs elsewhere."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["convserve", "serve"]' in dockerfile
    assert f"USER {_container()['securityContext']['runAsUser']}:" in dockerfile
    (k8s,) = [
        doc for doc in _documents(DEPLOY / "k8s" / "convserve.yaml") if doc["kind"] == "Deployment"
    ]
    images = {c["image"] for c in k8s["spec"]["template"]["spec"]["containers"]}
    assert _container()["image"] in images
    mounts = {m["mountPath"] for m in _container()["volumeMounts"]}
    assert _container()["securityContext"]["readOnlyRootFilesystem"] and "/tmp" in mounts
