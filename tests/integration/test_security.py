"""TLS, mutual TLS and bearer tokens, with certificates made for the run."""

from __future__ import annotations

import contextlib
import logging
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from client import Client
from client.errors import PermissionDenied, Unauthenticated, Unavailable
from convserve.api.pb.convserve.v1 import convserve_pb2 as pb
from convserve.api.pb.convserve.v1 import convserve_pb2_grpc as pb_grpc
from tests.certs import Authority
from tests.conftest import RunningServer, serving

IMAGE = np.zeros((1, 28, 28), np.uint8)
INFERENCE_TOKEN = "inference-token-0123456789"
ADMIN_TOKEN = "admin-token-from-the-file-42"


def _settings(models_dir: Path, **security: Any) -> Any:
    from service.settings import Settings

    return Settings(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0,
                    models_dir=models_dir, default_model="fashion", **security)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("pki")
    ca, stranger = Authority(root / "ca"), Authority(root / "stranger", "another CA")
    return {
        "ca": ca.pair.cert,
        "server": ca.issue("server", server=True),
        "client": ca.issue("client", server=False),
        "stranger_ca": stranger.pair.cert,
        "stranger_client": stranger.issue("client", server=False),
    }


@pytest.fixture(scope="module")
def tls_server(models_dir: Path, pki: dict[str, Any]) -> Iterator[RunningServer]:
    settings = _settings(models_dir, tls_cert=pki["server"].cert, tls_key=pki["server"].key,
                         reflection=False)  # fmt: skip
    with serving(settings) as running:
        yield running


def test_tls_answers_clients_that_trust_its_ca(tls_server: RunningServer, pki: Any) -> None:
    with Client(tls_server.target, ca_cert=pki["ca"]) as client:
        assert client.predict(IMAGE).model == "fashion"
    for wrong in ({}, {"ca_cert": pki["stranger_ca"]}):  # plaintext; a CA that did not sign it
        with (
            Client(tls_server.target, retries=0, timeout=5, **wrong) as client,
            pytest.raises(Unavailable),
        ):
            client.predict(IMAGE)


def _https_status(port: int, context: ssl.SSLContext) -> int:
    url = f"https://127.0.0.1:{port}/v2/health/ready"
    with urllib.request.urlopen(url, timeout=10, context=context) as answer:
        return int(answer.status)


def test_the_http_door_speaks_the_same_tls(tls_server: RunningServer, pki: Any) -> None:
    port = tls_server.server.http_port
    assert _https_status(port, ssl.create_default_context(cafile=pki["ca"])) == 200
    with pytest.raises(urllib.error.URLError):  # a CA that did not sign it
        _https_status(port, ssl.create_default_context(cafile=pki["stranger_ca"]))
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plaintext
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=10)


def test_reflection_can_be_switched_off(tls_server: RunningServer, pki: Any) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    credentials = grpc.ssl_channel_credentials(pki["ca"].read_bytes())
    with (
        grpc.secure_channel(tls_server.target, credentials) as channel,
        pytest.raises(grpc.RpcError) as error,
    ):
        ProtoReflectionDescriptorDatabase(channel).get_services()
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_mutual_tls_needs_a_client_certificate_its_ca_signed(
    models_dir: Path, pki: dict[str, Any]
) -> None:
    settings = _settings(models_dir, tls_cert=pki["server"].cert, tls_key=pki["server"].key,
                         tls_client_ca=pki["ca"])  # fmt: skip
    with serving(settings) as server:
        mine = {"client_cert": pki["client"].cert, "client_key": pki["client"].key}
        with Client(server.target, ca_cert=pki["ca"], **mine) as client:
            assert client.predict(IMAGE).model == "fashion"
        stranger = {"client_cert": pki["stranger_client"].cert,
                    "client_key": pki["stranger_client"].key}  # fmt: skip
        for wrong in ({}, stranger):
            with (
                Client(server.target, ca_cert=pki["ca"], retries=0, timeout=5, **wrong) as client,
                pytest.raises(Unavailable),
            ):
                client.predict(IMAGE)
        # The HTTP door asks for the same client certificates.
        context = ssl.create_default_context(cafile=pki["ca"])
        with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
            _https_status(server.server.http_port, context)
        context.load_cert_chain(pki["client"].cert, pki["client"].key)
        assert _https_status(server.server.http_port, context) == 200


@pytest.fixture(scope="module")
def token_server(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    tokens_file = tmp_path_factory.mktemp("tokens") / "tokens"
    tokens_file.write_text(f"# operators\n{ADMIN_TOKEN}:admin\n")
    settings = _settings(models_dir, auth_tokens=f"{INFERENCE_TOKEN}:inference",
                         auth_tokens_file=tokens_file)  # fmt: skip
    with serving(settings) as running:
        yield running


def test_calls_without_a_valid_token_are_unauthenticated(token_server: RunningServer) -> None:
    with Client(token_server.target) as client:
        with pytest.raises(Unauthenticated, match=r"needs a bearer token.*authorization: Bearer"):
            client.predict(IMAGE)
        assert client.health() == "SERVING"  # probes need no token
    with (
        Client(token_server.target, token="not-a-token-of-this-server") as client,
        pytest.raises(Unauthenticated, match="the bearer token is not valid"),
    ):
        client.list_models()


def test_an_inference_token_may_not_load_or_unload(token_server: RunningServer) -> None:
    with Client(token_server.target, token=INFERENCE_TOKEN) as client:
        assert client.predict(IMAGE).model == "fashion"
        with pytest.raises(PermissionDenied, match="RepositoryModelUnload needs a token with "
                           "scope admin; this token's scope is inference"):  # fmt: skip
            client.unload_model("layers")
        assert [m.name for m in client.list_models()] == ["cam", "fashion", "layers"]
    with Client(token_server.target, token=ADMIN_TOKEN) as admin:
        admin.unload_model("layers")
        assert [m.name for m in admin.list_models()] == ["cam", "fashion"]
        admin.load_model("layers")


def test_reflection_is_behind_the_tokens(token_server: RunningServer) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with grpc.insecure_channel(token_server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            next(stub.ServerReflectionInfo(iter([request]), timeout=10))
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        metadata = [("authorization", f"Bearer {INFERENCE_TOKEN}")]
        answer = next(stub.ServerReflectionInfo(iter([request]), timeout=10, metadata=metadata))
    assert "convserve.v1.ConvServe" in str(answer.list_services_response)


@pytest.fixture
def access_log() -> Iterator[None]:
    """The access log on, as --access-log turns it on."""
    access = logging.getLogger("convserve.access")
    access.setLevel(logging.INFO)
    yield
    access.setLevel(logging.NOTSET)


@pytest.mark.usefixtures("access_log")
def test_tokens_never_reach_logs_or_metrics(
    token_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG), contextlib.suppress(Unauthenticated):
        for token in (INFERENCE_TOKEN, ADMIN_TOKEN, "a-wrong-token-0123456789"):
            with Client(token_server.target, token=token) as client:
                client.predict(IMAGE)
    assert any(record.name == "convserve.access" for record in caplog.records)
    metrics = token_server.scrape()
    assert 'code="UNAUTHENTICATED"' in metrics
    for token in (INFERENCE_TOKEN, ADMIN_TOKEN, "a-wrong-token"):
        assert token not in caplog.text and token not in metrics


@pytest.mark.usefixtures("access_log")
def test_a_refused_call_has_its_request_id_and_access_log_line(
    token_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO, "convserve.access"),
        grpc.insecure_channel(token_server.target) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        pb_grpc.ConvServeStub(channel).ListModels(
            pb.ListModelsRequest(), metadata=(("x-request-id", "no-token-7"),), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert dict(caught.value.trailing_metadata())["x-request-id"] == "no-token-7"
    lines = [r.getMessage() for r in caplog.records if "request_id=no-token-7" in r.getMessage()]
    assert lines == [
        "request_id=no-token-7 method=ListModels model= version= code=UNAUTHENTICATED ms=0.0"
        " protocol=grpc"
    ]


def test_the_command_line_speaks_tls_and_tokens(models_dir: Path, pki: dict[str, Any]) -> None:
    settings = _settings(models_dir, tls_cert=pki["server"].cert, tls_key=pki["server"].key,
                         auth_tokens=f"{INFERENCE_TOKEN}:inference")  # fmt: skip
    with serving(settings) as server:
        done = subprocess.run(
            [sys.executable, "-m", "convserve", "models", "--target", server.target,
             "--ca-cert", str(pki["ca"]), "--token", INFERENCE_TOKEN],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "\nfashion (default): versions 1" in done.stdout


@pytest.mark.parametrize(
    ("security", "problem"),
    [
        ({"tls_cert": "cert"}, "tls_cert and tls_key go together"),
        ({"auth_tokens": "short:admin"}, "shorter than 16 characters"),
        ({"auth_tokens": "a-long-enough-token-123:root"}, "entry 1 is not TOKEN:SCOPE"),
    ],
)
def test_security_settings_say_what_is_wrong(
    models_dir: Path, tmp_path: Path, security: dict[str, str], problem: str
) -> None:
    from pydantic import ValidationError

    if "tls_cert" in security:
        (tmp_path / "cert").write_text("x")
        security = {"tls_cert": str(tmp_path / "cert")}
    with pytest.raises(ValidationError, match=problem) as error:
        _settings(models_dir, **security)
    assert "a-long-enough-token" not in str(error.value)
