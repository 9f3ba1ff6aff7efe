"""Client-side request building, without a server."""

from __future__ import annotations

import socket
from pathlib import Path

import grpc
import numpy as np
import pytest

from client import Client
from client.client import _health_request, _health_status, _images_message
from client.errors import InvalidArgument, Unavailable, from_rpc_error
from convserve.api.codec import from_tensor


def test_integer_and_float64_pixels_are_converted() -> None:
    ints = _images_message(np.full((1, 28, 28), 200, np.int64))
    assert from_tensor(ints.tensor).dtype == np.uint8
    floats = _images_message(np.full((1, 28, 28), 0.5))
    assert from_tensor(floats.tensor).dtype == np.float32


def test_out_of_range_integer_pixels_are_refused() -> None:
    with pytest.raises(ValueError, match=r"integer pixels must be 0..255, got -1..300"):
        _images_message(np.array([[[-1, 300]]]))


def test_files_are_sent_encoded(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"\x89PNG fake")
    message = _images_message([tmp_path / "a.png", b"\xff\xd8\xff raw"])
    assert list(message.encoded.files) == [b"\x89PNG fake", b"\xff\xd8\xff raw"]


def test_health_messages_match_the_protocol() -> None:
    from grpc_health.v1 import health_pb2

    request = health_pb2.HealthCheckRequest.FromString(_health_request("fashion"))
    assert request.service == "fashion"
    for status in (0, 1, 2, 3):
        encoded = health_pb2.HealthCheckResponse(status=status).SerializeToString()
        assert _health_status(encoded) == health_pb2.HealthCheckResponse.ServingStatus.Name(status)


class _Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_status_codes_become_typed_exceptions() -> None:
    error = from_rpc_error(_Failed(grpc.StatusCode.INVALID_ARGUMENT, "bad shape"))
    assert isinstance(error, InvalidArgument) and str(error) == "INVALID_ARGUMENT: bad shape"


def test_no_server_is_unavailable() -> None:
    with socket.socket() as sock:  # a port nobody listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{sock.getsockname()[1]}"
    with Client(target, timeout=5, retries=1) as client, pytest.raises(Unavailable):
        client.health()


@pytest.mark.parametrize("single", ["shirt.png", b"\x89PNG", Path("shirt.png")])
def test_one_file_instead_of_a_list_is_a_clear_error(single: object) -> None:
    with pytest.raises(TypeError, match="pass a list of files"):
        _images_message(single)  # type: ignore[arg-type]
