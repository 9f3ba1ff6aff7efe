"""Property-based fuzzing over the wire: whatever bytes arrive, the caller gets a status that
says what was wrong (never INTERNAL or UNKNOWN), the process lives, and its memory stays put.

`make test` runs FUZZ_EXAMPLES (default 300) cases; `make fuzz` runs 10,000.
"""

from __future__ import annotations

import collections
import os
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client import Client
from convserve.api.pb.convserve.v1 import convserve_pb2 as pb
from convserve.api.pb.inference import grpc_predict_v2_pb2 as v2
from tests.conftest import free_port

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
REFUSED = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
V1, V2 = "/convserve.v1.ConvServe/", "/inference.GRPCInferenceService/"
V1_METHODS = ("Predict", "FeatureMap", "Explain", "Filters", "GetModelMetadata", "ListModels")
METHODS = [f"{V1}{m}" for m in V1_METHODS] + [
    f"{V2}{m}" for m in ("ModelInfer", "ModelMetadata", "ModelReady", "RepositoryModelLoad")
]


@pytest.fixture(scope="module")
def fuzzed(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """`convserve serve` in its own process (its RSS is its own), and a channel to it."""
    port = free_port()
    log = tmp_path_factory.mktemp("fuzz") / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "convserve", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--metrics-port", "-1", "--models-dir", str(models_dir),
             "--default-model", "fashion", "--max-message-bytes", str(4 << 20), "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    target = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    with Client(target, retries=0, timeout=2) as client:
        while True:
            try:
                if client.health() == "SERVING":
                    break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)
    channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 8 << 20)])
    yield process, channel
    channel.close()
    process.terminate()
    process.wait(timeout=60)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# --- what a caller might send ---

DIMS = st.one_of(
    st.sampled_from([0, 1, 2, 27, 28, 29, -1, -28]),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(1 << 20, 1 << 40),
)
NAMES = st.one_of(
    st.sampled_from(["", "fashion", "layers", "conv2d", "conv2d_1", "probabilities"]),
    st.text(max_size=40),
    st.text(min_size=5000, max_size=20000),
)


def _png(width: int, height: int, data: bytes) -> bytes:
    """A PNG whose header claims `width` x `height` (a decompression bomb when they are huge)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(data))
        + (chunk(b"IEND", b""))
    )


@st.composite
def tensors(draw: st.DrawFn) -> pb.Tensor:
    shape = draw(st.lists(DIMS, max_size=5))
    dtype = draw(st.sampled_from([0, 1, 2, 7]))
    itemsize = 4 if dtype == 2 else 1
    count = int(np.prod([max(d, 0) for d in shape], dtype=object)) if shape else 0
    if count * itemsize <= 1 << 20 and draw(st.booleans()):  # the right length, or one off
        length = max(count * itemsize + draw(st.sampled_from([-1, 0, 0, 1])), 0)
        if dtype == 2 and draw(st.booleans()):
            values = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -5.0, 128.0]))
            content = np.full(length // 4, values, np.float32).tobytes() + b"\0" * (length % 4)
        else:
            content = (
                draw(st.binary(min_size=length, max_size=length))
                if length < 4096
                else (bytes(length))
            )
    else:
        content = draw(st.binary(max_size=256))
    return pb.Tensor(dtype=dtype, shape=shape, content=content)


@st.composite
def encoded(draw: st.DrawFn) -> pb.Images:
    side = st.integers(0, 2**31 - 1)  # huge sides: a decompression bomb
    files = draw(st.lists(st.one_of(
        st.binary(max_size=512),
        st.builds(_png, side, side, st.binary(max_size=64)),
        st.builds(lambda n: _png(28, 28, bytes(28 * 29))[:n], st.integers(0, 120)),
    ), max_size=4))  # fmt: skip
    return pb.Images(encoded=pb.EncodedImages(files=files))


def _spec(draw: st.DrawFn) -> pb.ModelSpec:
    return pb.ModelSpec(name=draw(NAMES), version=draw(st.sampled_from([0, 1, 2, -1, 2**62])))


@st.composite
def v1_requests(draw: st.DrawFn) -> tuple[str, bytes]:
    images = pb.Images(tensor=draw(tensors())) if draw(st.booleans()) else draw(encoded())
    method = draw(st.sampled_from(["Predict", "FeatureMap", "Explain", "Filters"]))
    message: Any
    if method == "Predict":
        message = pb.PredictRequest(model=_spec(draw), images=images,
                                    top_k=draw(st.integers(-5, 100)))  # fmt: skip
    elif method == "FeatureMap":
        message = pb.FeatureMapRequest(model=_spec(draw), images=images, layer=draw(NAMES),
                                       include_pre_activation=draw(st.booleans()))  # fmt: skip
    elif method == "Explain":
        message = pb.ExplainRequest(
            model=_spec(draw), images=images, layer=draw(NAMES), method=draw(st.integers(-1, 3)),
            class_index=draw(st.none() | st.integers(-(2**31), 2**31 - 1)),
        )  # fmt: skip
    else:
        message = pb.FiltersRequest(model=_spec(draw), layer=draw(NAMES))
    return f"{V1}{method}", message.SerializeToString()


@st.composite
def v2_requests(draw: st.DrawFn) -> tuple[str, bytes]:
    tensor = draw(tensors())
    datatype = draw(st.sampled_from(["UINT8", "FP32", "INT32", "BYTES", "", "FP64"]))
    entry = v2.ModelInferRequest.InferInputTensor(name=draw(NAMES), datatype=datatype,
                                                  shape=tensor.shape)  # fmt: skip
    request = v2.ModelInferRequest(model_name=draw(NAMES), model_version=draw(NAMES),
                                   inputs=[entry] * draw(st.integers(0, 2)))  # fmt: skip
    if draw(st.booleans()):
        request.raw_input_contents.append(tensor.content)
    else:
        entry_contents = request.inputs[0].contents if request.inputs else None
        if entry_contents is not None:
            entry_contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=50)))
    for name in draw(st.lists(NAMES | st.sampled_from(["gradcam", "hirescam"]), max_size=3)):
        output = request.outputs.add(name=name)
        for key in draw(st.lists(st.sampled_from(["layer", "class_index", "x"]), max_size=2)):
            parameter = output.parameters[key]
            if draw(st.booleans()):
                parameter.int64_param = draw(st.integers(-(2**63), 2**63 - 1))
            else:
                parameter.string_param = draw(NAMES)
    return f"{V2}ModelInfer", request.SerializeToString()


def _invalid_utf8(draw: st.DrawFn) -> tuple[str, bytes]:
    """A model name that is not UTF-8: protobuf string fields must be."""
    name = draw(st.binary(min_size=1, max_size=64).filter(_not_utf8))
    spec = b"\x0a" + bytes([len(name)]) + name  # ModelSpec.name
    return f"{V1}GetModelMetadata", b"\x0a" + bytes([len(spec)]) + spec


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return True
    return False


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["v1", "v2", "garbage", "truncated", "utf8"]))
    if kind == "v1":
        return draw(v1_requests())
    if kind == "v2":
        return draw(v2_requests())
    if kind == "utf8":
        return _invalid_utf8(draw)
    if kind == "truncated":  # a valid message, cut short
        method, body = draw(st.one_of(v1_requests(), v2_requests()))
        return method, body[: draw(st.integers(0, max(len(body) - 1, 0)))]
    return draw(st.sampled_from(METHODS)), draw(st.binary(max_size=2048))


def test_no_request_gets_internal_kills_the_server_or_grows_its_memory(fuzzed: Any) -> None:
    process, channel = fuzzed
    seen: collections.Counter[str] = collections.Counter()
    rss_at_50 = 0.0

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
    @given(call=calls())
    def one_call(call: tuple[str, bytes]) -> None:
        nonlocal rss_at_50
        method, body = call
        try:
            channel.unary_unary(method)(body, timeout=30)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
            assert code not in REFUSED, f"{method}: {code} {error.details()}"
            assert error.details(), f"{method}: {code} without a message"
            # The server's own answer, not a transport failure (e.g. trailers over the limit).
            assert "Stream removed" not in error.details(), error.details()
        seen[code.name] += 1
        if sum(seen.values()) == 50:
            rss_at_50 = _rss_mb(process.pid)
        assert process.poll() is None

    one_call()
    cases = sum(seen.values())
    assert cases >= EXAMPLES and process.poll() is None
    with Client(f"127.0.0.1:{_port(process)}") as client:
        assert client.health() == "SERVING"
    rss = _rss_mb(process.pid)
    print(f"\nfuzz: {cases} cases, statuses {dict(seen)}, RSS {rss_at_50:.0f} MB after 50, "
          f"{rss:.0f} MB now")  # fmt: skip
    assert rss - rss_at_50 < 50
    assert len(seen) >= 3  # the cases reached several different answers


def _port(process: subprocess.Popen[bytes]) -> int:
    args = list(process.args)  # type: ignore[arg-type]
    return int(args[args.index("--port") + 1])
