"""Property-based fuzzing of the HTTP door, as test_fuzz.py fuzzes gRPC: whatever a caller
sends to --http-port (any route and method, JSON broken at every level, binary-extension
bodies whose lengths do not add up, any Content-Type, Content-Encoding and
Connect-Timeout-Ms, Connect calls as JSON or protobuf bytes, malformed HTTP framing), it
gets a 2xx or a 4xx (an error is JSON, every answer has its x-request-id), never a 5xx,
the process lives, and its memory stays put.

`make test` runs FUZZ_EXAMPLES (default 300) cases; set it to 10,000 for a long run. A request
aiohttp's HTTP parser refuses before any route sees it (a method it does not know, broken
framing) is answered by aiohttp itself, in text: of those only a 4xx is asked.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import functools
import gzip
import http.client
import io
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, unquote, urlsplit

import numpy as np
import pytest
from google.protobuf import json_format, message_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from convserve.api.pb.convserve.v1 import convserve_pb2 as pb
from convserve.api.pb.inference import grpc_predict_v2_pb2 as v2
from tests.conftest import free_port
from tests.integration.test_fuzz import _png, _rss_mb, calls

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
LIMIT = 4 << 20  # --max-message-bytes
MODELS = ("fashion", "layers", "cam")
CONNECT_PREFIXES = ("/convserve.", "/inference.")
# How long a whole request's answer may take: the slowest case (eight 25-megapixel PNGs to
# decode) takes 2 s here; a server waiting for a body that has arrived waits 30 s.
ANSWER_WITHIN = 15.0
# How long a malformed request's answer may take: aiohttp's parser answers at once, or waits
# for the rest of a request it cannot tell is incomplete (then the next call checks health).
RAW_WAIT = 2.0
JSON_TYPE = "application/json"
# glibc's threshold for mmap, fixed (by default it rises to 32 MB after a large free): buffers
# of 128 KB or more are given back when freed, so the RSS measures what the server holds, not
# its arenas' high-water mark, which depends on the order of the cases (with the default, the
# same 3,000 cases ended 100-190 MB above the warm-up; with this, 4 MB).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 << 10)}
SERVICES = (
    pb.DESCRIPTOR.services_by_name["ConvServe"],
    v2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
)
# Every method's Connect path and its request message (streaming ones have no route: 404).
REQUESTS = {
    f"/{service.full_name}/{method.name}": message_factory.GetMessageClass(method.input_type)
    for service in SERVICES
    for method in service.methods
}
CONNECT_CODES = {
    "canceled", "unknown", "invalid_argument", "deadline_exceeded", "not_found",
    "already_exists", "permission_denied", "resource_exhausted", "failed_precondition",
    "aborted", "out_of_range", "unimplemented", "internal", "unavailable", "data_loss",
    "unauthenticated", "cancelled",
}  # fmt: skip


class Door(NamedTuple):
    process: subprocess.Popen[bytes]
    port: int
    log: Path


@pytest.fixture(scope="module")
def door(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    """`convserve serve` in its own process (its RSS is its own), its HTTP door on a free port."""
    grpc_port = free_port()
    http_port = free_port()
    while http_port == grpc_port:
        http_port = free_port()
    log = tmp_path_factory.mktemp("fuzz-http") / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "convserve", "serve", "--host", "127.0.0.1",
             "--port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", "-1",
             "--models-dir", str(models_dir), "--default-model", "fashion",
             "--max-message-bytes", str(LIMIT), "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **MALLOC_ENV},
        )  # fmt: skip
    running = Door(process, http_port, log)
    deadline = time.monotonic() + 120
    while True:
        try:
            if _send(running, Call("GET", "/v2/health/ready")).status == 200:
                break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    yield running
    process.terminate()
    process.wait(timeout=60)


# --- what is sent, and what comes back ---


@dataclass
class Call:
    method: str
    path: str  # as sent: percent-encoded, maybe with a query
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    chunked: bool = False  # the body in Transfer-Encoding: chunked
    raw: bytes | None = None  # sent as it is over a socket instead (malformed HTTP framing)
    kind: str = ""

    def __repr__(self) -> str:  # what hypothesis prints of a failing example: bodies cut
        def cut(data: bytes | None) -> str:
            if data is None or len(data) <= 600:
                return repr(data)
            return f"{data[:600]!r}... ({len(data)} bytes)"

        sent = f"raw={cut(self.raw)}" if self.raw is not None else f"body={cut(self.body)}"
        return (
            f"Call({self.kind}: {self.method} {self.path[:300]!r}, headers={self.headers!r}, "
            f"chunked={self.chunked}, {sent})"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis prints this way
        printer.text(repr(self))

    @property
    def route(self) -> str:
        return unquote(urlsplit(self.path).path)


class Answer(NamedTuple):
    status: int  # 0: the connection closed with no answer (raw framing only)
    headers: dict[str, str]
    body: bytes
    version: int = 11  # 10: HTTP/1.0, aiohttp's answer to a request its parser refused

    @property
    def refused_by_parser(self) -> bool:
        """aiohttp's HTTP layer refused the request before any route saw it (a method it does
        not know, a body it cannot decode, bad framing): it answers as HTTP/1.0, in text."""
        return self.version == 10 and "json" not in self.headers.get("content-type", "")


def _send(door: Door, call: Call) -> Answer:
    if call.raw is not None:
        return _send_raw(door.port, call.raw)
    connection = http.client.HTTPConnection("127.0.0.1", door.port, timeout=ANSWER_WITHIN)
    try:
        body: Any = call.body
        if call.chunked and body is not None:
            body = iter([body[: len(body) // 2], body[len(body) // 2 :]])
        # Answered (a 413, aiohttp's 400) and closed before all of it was sent: read the answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.request(call.method, call.path, body=body, headers=call.headers,
                               encode_chunked=call.chunked)  # fmt: skip
        response = connection.getresponse()
        data = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()
    return Answer(response.status, headers, data, response.version)


def _send_raw(port: int, data: bytes) -> Answer:
    """The first final answer to `data` (its status, headers and Content-Length body), or
    status 0 when the server closed the connection, or waits for more of a request, unanswered.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=RAW_WAIT) as sock:
        # Answered (or closed) before it read everything: read what it said.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        received = b""
        try:
            while True:
                while b"\r\n\r\n" not in received:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return Answer(0, {}, received)
                    received += chunk
                head, _, received = received.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                status = re.match(r"HTTP/(\d)\.(\d) (\d{3}) ", lines[0])
                assert status, f"not an HTTP answer: {head[:300]!r}"
                if not status.group(3).startswith("1"):  # not 100 Continue: the answer
                    break
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            while len(received) < int(headers.get("content-length", "0")):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except (ConnectionResetError, TimeoutError):
            return Answer(0, {}, received)
    version = int(status.group(1)) * 10 + int(status.group(2))
    return Answer(int(status.group(3)), headers, received, version)


# --- JSON, broken at every level ---


def _one_in(draw: st.DrawFn, times: int) -> bool:
    """True one time in `times`; False when hypothesis shrinks a failing case."""
    return draw(st.integers(1, times)) == times


class Raw(str):
    """JSON text written as it is (NaN, 1e999, 5000-digit numbers, 100,000-deep lists)."""


def _dumps(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{_dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dumps(v) for v in value) + "]"
    return json.dumps(value)  # floats: NaN, Infinity; strings: lone surrogates as \ud800


def _deep(depth: int, kind: str) -> Raw:
    if kind == "list":
        return Raw("[" * depth + "0" + "]" * depth)
    return Raw('{"a":' * depth + "0" + "}" * depth)


NUMBER_TEXTS = ["NaN", "-NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-999", "-0",
                "1" * 4300, "9" * 5000, "1.5e308", "01", "1.", "+1", "0x10", ".5"]  # fmt: skip
STRINGS = st.one_of(
    st.sampled_from(["", "images", "UINT8", "FP32", "BYTES", "probabilities", "conv2d",
                     "\ud800", "\udfff", "\x00", "a" * 5000, "../fashion", "fashion"]),
    st.text(max_size=20),
)  # fmt: skip
HUGE_INTS = st.sampled_from([2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**100, 10**400])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), HUGE_INTS, st.floats(), STRINGS,
    st.sampled_from([Raw(text) for text in NUMBER_TEXTS]),
    st.builds(_deep, st.sampled_from([2, 33, 900, 1000, 5000, 100_000]),
              st.sampled_from(["list", "object"])),
)  # fmt: skip
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(STRINGS, inner, max_size=3),
    max_leaves=6,
)


def _nodes(value: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path to every value in a document, the document's own () first."""
    yield at
    if isinstance(value, dict) and not isinstance(value, Raw):
        for key, item in value.items():
            yield from _nodes(item, (*at, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _nodes(item, (*at, index))


def _mutated(draw: st.DrawFn, document: Any) -> Any:
    """The document with up to three values (at any depth) replaced by junk, dropped, or
    given a sibling."""
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        nodes = list(_nodes(document))
        fields = [at for at in nodes if at and isinstance(at[-1], str)]
        if fields and draw(st.booleans()):  # a named field's value, at any depth, more often
            nodes = fields
        at = draw(st.sampled_from(nodes))
        if not at:
            document = draw(JUNK)
            continue
        parent = document
        for key in at[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "drop", "add"]))
        if action == "replace":
            parent[at[-1]] = draw(JUNK)
        elif action == "drop":
            del parent[at[-1]]
        elif isinstance(parent, list):
            parent.insert(at[-1], draw(JUNK))
        else:
            parent[draw(STRINGS)] = draw(JUNK)
    return document


@st.composite
def json_bytes(draw: st.DrawFn, document: Any) -> bytes:
    """`document`, mutated, as JSON text: whole, truncated, padded, or in another encoding."""
    text = _dumps(_mutated(draw, document))
    form = draw(st.sampled_from(["utf-8"] * 6 + ["truncated", "trailing", "bom", "utf-16",
                                                 "latin-1", "junk"]))  # fmt: skip
    if form == "truncated":
        return text.encode("utf-8", "surrogatepass")[: draw(st.integers(0, max(len(text) - 1, 0)))]
    if form == "trailing":
        return (text + draw(st.sampled_from([" ", "}", ",", "\x00", " {}", "\n//"]))).encode()
    if form == "bom":
        return b"\xef\xbb\xbf" + text.encode("utf-8", "surrogatepass")
    if form == "utf-16":
        return text.encode("utf-16", "surrogatepass")
    if form == "latin-1":
        return text.encode("latin-1", "replace") + b"\xff"
    if form == "junk":
        return draw(st.binary(max_size=300))
    return text.encode("utf-8", "surrogatepass")


# --- inference requests (JSON data, and the binary extension) ---

DATATYPES = ["UINT8", "FP32", "BYTES", "INT8", "INT16", "INT32", "INT64", "UINT16", "UINT32",
             "UINT64", "FP16", "FP64", "BF16", "BOOL", "", "uint8", "fp32", "STRING"]  # fmt: skip
DIMS = st.one_of(
    st.sampled_from([0, 1, 2, 3, 27, 28, 29, 784, -1, -28]),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([2**31, 2**32, 2**62, 2**63, 2**64, 10**30]),
)
LAYOUTS = [(28, 28), (784,), (28, 28, 1), (27, 29), (28, 28, 3), (), (1, 1, 28, 28)]
OUTPUT_NAMES = ["probabilities", "gradcam", "hirescam", "occlusion", "conv2d", "conv2d_1",
                "max_pooling2d", "conv2d_2", "", "x"]  # fmt: skip


@functools.cache
def _good_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(784, dtype=np.uint8).reshape(28, 28)).save(buffer, "PNG")
    return buffer.getvalue()


@functools.cache
def _bomb_png(side: int) -> bytes:
    """A valid side x side grayscale PNG of zeros: 25 MB of pixels in 25 KB at 5,000 (the most
    the server decodes), 100 MB at 10,000 (refused from its header)."""
    return _png(side, side, bytes((side + 1) * side))  # a filter byte and a row, per row


FILES = st.one_of(
    st.builds(_good_png),
    st.builds(lambda n: _good_png()[:n], st.integers(0, 120)),
    st.builds(_png, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1),
              st.binary(max_size=64)),
    st.builds(_bomb_png, st.sampled_from([5_000, 10_000])),
    st.binary(max_size=256),
    st.builds(lambda tail: b"\xff\xd8\xff\xe0" + tail, st.binary(max_size=128)),
)  # fmt: skip


def _count(shape: list[Any]) -> int | None:
    """How many values `shape` holds, if a sane number."""
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        return None
    total = int(np.prod(shape, dtype=object)) if shape else 1
    return total if total <= 20_000 else None


@st.composite
def tensor_shape(draw: st.DrawFn) -> list[Any]:
    if _one_in(draw, 4):
        return draw(st.lists(DIMS, max_size=6))
    images = draw(st.sampled_from([0, 1, 1, 2, 3, 17]))
    return [images, *draw(st.sampled_from(LAYOUTS))]


@st.composite
def pixel_values(draw: st.DrawFn, shape: list[Any]) -> Any:
    """Numbers for `shape`: the right count or one off, flat or nested, in range or not."""
    count = _count(shape)
    if count is None:
        count = draw(st.integers(0, 100))
    count = max(count + draw(st.sampled_from([0, 0, 0, 0, -1, 1])), 0)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["pixels", "pixels", "floats", "wide", "special", "huge"]))
    if kind == "pixels":
        values = rng.integers(0, 256, count)
    elif kind == "floats":
        values = rng.random(count) * 255
    elif kind == "wide":
        values = rng.integers(-1000, 1000, count)
    elif kind == "special":
        values = np.full(count, draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e300, -0.0])))
    else:  # integers no float holds (JSON has no limit), or no int64
        big = draw(st.sampled_from(["1" + "0" * 400, "-" + "9" * 20, "18446744073709551616"]))
        return Raw("[" + ",".join([big] * max(count, 1)) + "]")
    if _count(shape) == count and shape and max(shape) <= count and draw(st.booleans()):
        return Raw(json.dumps(values.reshape(shape).tolist()))  # nested as the shape says
    if _one_in(draw, 6):  # ragged, or with a value of the wrong type inside
        return [values[:3].tolist(), draw(JUNK), *values[3:6].tolist()]
    return Raw(json.dumps(values.tolist()))


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@st.composite
def bytes_values(draw: st.DrawFn, shape: list[Any]) -> Any:
    count = _count(shape)
    count = min(count if count is not None else 1, 4) + draw(st.sampled_from([0, 0, -1, 1]))
    items = []
    for _ in range(max(count, 0)):
        items.append(draw(st.one_of(
            st.builds(_base64, FILES),
            st.sampled_from(["%%", "aGk", "====", "aGVsbG8=\n", " aGk= ", "ñ", "", "a" * 4001]),
            st.text(max_size=20),
            JUNK,
        )))  # fmt: skip
    if _one_in(draw, 6):  # one value, not a list
        return items[0] if items else ""
    return items


@st.composite
def outputs(draw: st.DrawFn) -> list[Any]:
    answer = []
    for _ in range(draw(st.integers(0, 3))):
        output: dict[str, Any] = {"name": draw(st.sampled_from(OUTPUT_NAMES))}
        parameters = {}
        if draw(st.booleans()):
            parameters["layer"] = draw(st.sampled_from(OUTPUT_NAMES[4:]) | STRINGS | JUNK)
        if draw(st.booleans()):
            parameters["class_index"] = draw(st.sampled_from([0, 3, 9, 10, -1]) | HUGE_INTS
                                             | JUNK)  # fmt: skip
        if draw(st.booleans()):
            parameters["binary_data"] = draw(st.booleans() | JUNK)
        if _one_in(draw, 5):
            parameters[draw(STRINGS)] = draw(JUNK)
        if parameters:
            output["parameters"] = parameters
        answer.append(output)
    return answer


@st.composite
def infer_documents(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An inference request's JSON (mostly well formed), and its input tensors in it."""
    tensors = []
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 0]))):
        datatype = draw(st.sampled_from(DATATYPES) | st.text(max_size=8))
        shape = draw(tensor_shape())
        data = draw(bytes_values(shape) if datatype == "BYTES" else pixel_values(shape))
        name = draw(st.sampled_from(["images", "images", "images", "x", ""]))
        tensors.append({"name": name, "datatype": datatype, "shape": shape, "data": data})
    document: dict[str, Any] = {"inputs": tensors}
    if draw(st.booleans()):
        document["outputs"] = draw(outputs())
    if _one_in(draw, 4):
        document["parameters"] = {"binary_data_output": draw(st.booleans() | JUNK)}
    if _one_in(draw, 4):
        document["id"] = draw(STRINGS | JUNK)
    return document, tensors


@st.composite
def model_segments(draw: st.DrawFn) -> str:
    return draw(st.one_of(
        st.sampled_from([*MODELS, *MODELS, "nope", "..", ".", "%2e%2e", "%2F", "%00",
                         "%ED%A0%80", "%FF", "fashion%20", "a" * 300]),
        st.text(max_size=30).map(lambda text: quote(text, safe="")),
    ))  # fmt: skip


VERSIONS = st.one_of(
    st.sampled_from(["1", "1", "0", "2", "-1", "x", "01", "9" * 19, "1e3", "%31", "%D9%A1"]),
    st.text(max_size=10).map(lambda text: quote(text, safe="")),
)


@st.composite
def model_paths(draw: st.DrawFn, suffix: str | None = None) -> str:
    path = f"/v2/models/{draw(model_segments())}"
    if draw(st.booleans()):
        path += f"/versions/{draw(VERSIONS)}"
    if suffix is None:
        suffix = draw(st.sampled_from(["", "/ready", "/infer", "/infer/", "/x", "/"]))
    return path + suffix


@st.composite
def infer_calls(draw: st.DrawFn) -> Call:
    document, _ = draw(infer_documents())
    return Call("POST", draw(model_paths("/infer")), body=draw(json_bytes(document)),
                kind="infer")  # fmt: skip


@st.composite
def blob(draw: st.DrawFn, tensor: dict[str, Any]) -> bytes:
    """An input's binary data: the bytes its shape needs (or one off), or not."""
    count = _count(tensor["shape"]) or 0
    datatype = tensor["datatype"]
    kind = draw(st.sampled_from(["fits", "fits", "fits", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=512))
    if datatype == "BYTES":
        files = [draw(FILES) for _ in range(min(count, 4))]
        prefix = [len(f) for f in files]
        if files and draw(st.booleans()):  # a length prefix that lies
            prefix[0] = draw(st.sampled_from([0, 2**32 - 1, len(files[0]) + 1, 2**31]))
        return b"".join(struct.pack("<I", n) + f for n, f in zip(prefix, files, strict=True))
    itemsize = 4 if datatype in ("FP32", "INT32", "UINT32") else 8 if "64" in datatype else 1
    length = max(count * itemsize + draw(st.sampled_from([0, 0, 0, -1, 1, 3])), 0)
    if datatype == "FP32" and draw(st.booleans()):
        value = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -5.0, 128.0]))
        return np.full(length // 4, value, "<f4").tobytes() + bytes(length % 4)
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1))).bytes(length)


@st.composite
def binary_calls(draw: st.DrawFn) -> Call:
    """The binary extension: Inference-Header-Content-Length, binary_data_size per input,
    and the bytes after the JSON; their lengths add up, or not."""
    document, tensors = draw(infer_documents())
    blobs = []
    for tensor in tensors:
        data = draw(blob(tensor))
        size: Any = len(data) + draw(st.sampled_from([0, 0, 0, 0, -1, 1, -len(data), 2**40]))
        if _one_in(draw, 10):
            size = draw(JUNK | HUGE_INTS)
        if not _one_in(draw, 5):  # else both data and binary_data_size
            del tensor["data"]
        tensor["parameters"] = {"binary_data_size": size}
        blobs.append(data)
    head = draw(json_bytes(document))
    tail = b"".join(blobs) + draw(st.sampled_from([b"", b"", b"", b"\0", b"left over"]))
    length: str = str(len(head) + draw(st.sampled_from([0, 0, 0, 0, -1, 1, -len(head)])))
    if _one_in(draw, 6):
        length = draw(st.sampled_from(["", "x", "-1", " 5", "5 ", "1e3", "0x10", "+3", "%D9%A1",
                                       str(len(head) + len(tail) + 1), "9" * 30]))  # fmt: skip
    headers = {"Inference-Header-Content-Length": length}
    return Call("POST", draw(model_paths("/infer")), headers, head + tail, kind="binary")


@st.composite
def big_calls(draw: st.DrawFn) -> Call:
    """Near and over --max-message-bytes: many images as bytes, and JSON too long to take."""
    images = draw(st.sampled_from([1000, 4096, 4097, 5349, 5350]))
    if draw(st.booleans()):
        document = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [images, 784],
                                "parameters": {"binary_data_size": images * 784}}]}  # fmt: skip
        head = json.dumps(document).encode()
        headers = {"Inference-Header-Content-Length": str(len(head))}
        return Call("POST", "/v2/models/fashion/infer", headers, head + bytes(images * 784),
                    kind="big")  # fmt: skip
    call = _pixels_as_json(draw(st.sampled_from([1000, 2600, 2700])))  # 2700: over 4 MB
    if draw(st.booleans()):  # cut at the limit: too long, or the most JSON that is not JSON
        call.body = call.body[: LIMIT + draw(st.sampled_from([-1, 0, 1]))]  # type: ignore[index]
    call.kind = "big"
    return call


# --- Connect calls, the repository, and any route ---


@st.composite
def connect_calls(draw: st.DrawFn) -> Call:
    if draw(st.booleans()):
        path, wire = draw(calls())  # test_fuzz's gRPC requests, valid or not
    else:
        path = draw(st.sampled_from(sorted(REQUESTS)) | st.sampled_from([
            "/convserve.v1.ConvServe/Nothing", "/convserve.v1.ConvServe/",
            "/inference.GRPCInferenceService/ModelStreamInfer", "/grpc.health.v1.Health/Check",
            "/convserve.v1.ConvServe/predict", "/convserve.v1.ConvServe/Predict/",
        ]))  # fmt: skip
        wire = draw(st.binary(max_size=512))
    if draw(st.booleans()):
        kinds = ["application/proto"] * 2 + ["application/proto; charset=utf-8", JSON_TYPE]
        kind = draw(st.sampled_from(kinds))
        return Call("POST", path, {"Content-Type": kind}, wire, kind="connect-proto")
    document: Any = {}
    message_class = REQUESTS.get(path)
    if message_class is not None:
        try:
            document = json_format.MessageToDict(message_class.FromString(wire))
        except Exception:  # not a message (or not UTF-8): a hand-made document instead
            document = {"name": draw(STRINGS), "model": {"name": draw(STRINGS)},
                        "modelName": draw(STRINGS), "version": draw(STRINGS)}  # fmt: skip
    kind = draw(st.sampled_from(["application/json"] * 3 + ["application/json; charset=utf-8",
                                                            "APPLICATION/JSON"]))  # fmt: skip
    return Call("POST", path, {"Content-Type": kind}, draw(json_bytes(document)),
                kind="connect-json")  # fmt: skip


@st.composite
def repository_calls(draw: st.DrawFn) -> Call:
    if draw(st.booleans()):
        body = draw(st.none() | st.just(b"") | json_bytes({"ready": draw(st.booleans())}))
        return Call("POST", "/v2/repository/index", body=body, kind="repository")
    action = draw(st.sampled_from(["load", "unload"]))
    path = f"/v2/repository/models/{draw(model_segments())}/{action}"
    body = draw(st.none() | json_bytes({"parameters": {"config": draw(STRINGS)}}))
    return Call("POST", path, body=body, kind="repository")


FIXED_PATHS = ["/", "", "/v2", "/v2/", "/v2/health/live", "/v2/health/ready", "/v2/health",
               "//v2/health/live", "/v2/health/live?x=1", "/v2/models", "/v2/repository/index",
               "/metrics", "/v2/%2e%2e/v2", "/v2/models/fashion/infer?binary=1",
               "/v2/health/live#x", "/%00", "/" + "a" * 5000]  # fmt: skip
METHODS = st.one_of(
    st.sampled_from(["GET", "POST", "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH",
                     "TRACE", "get", "CONNECT"]),
    st.from_regex(r"\A[A-Za-z]{1,12}\Z"),
)  # fmt: skip


@st.composite
def route_calls(draw: st.DrawFn) -> Call:
    """Any method on any route, with any body."""
    path = draw(st.one_of(
        st.sampled_from(FIXED_PATHS), model_paths(), st.sampled_from(sorted(REQUESTS)),
        st.text(max_size=40).map(lambda text: "/" + quote(text, safe="/?=&")),
        st.builds(lambda m, a: f"/v2/repository/models/{m}/{a}", model_segments(),
                  st.sampled_from(["load", "unload", "x"])),
    ))  # fmt: skip
    body = draw(st.none() | st.binary(max_size=256) | json_bytes(draw(JUNK)))
    return Call(draw(METHODS), path or "/", body=body, kind="route")


CONTENT_TYPES = ["application/json", "application/proto", "application/json; charset=utf-8",
                 "application/json; charset=latin-1", "text/plain", "", "application/octet-stream",
                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                 "application/connect+json", "application/grpc", "*/*", ";;;",
                 'application/json; charset="', "a/b; c=d; c=e"]  # fmt: skip
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
TIMEOUTS = ["0", "1", "5", "100", "30000", "-1", "soon", "1.5", " 10", "9" * 10, "9" * 11,
            "00000000001", "%D9%A3", "", "1e3"]  # fmt: skip
REQUEST_IDS = st.one_of(
    st.from_regex(r"\A[A-Za-z0-9_.-]{1,200}\Z"),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
            max_size=200),
)  # fmt: skip


def _gzip_bomb(size: int) -> bytes:
    """`size` bytes of zeros as gzip, 1 KB per MB: one compressed megabyte, repeated."""
    megabyte = bytes(1 << 20)
    count, rest = divmod(size, len(megabyte))
    block = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate; a full flush: no history
    repeated = block.compress(megabyte) + block.flush(zlib.Z_FULL_FLUSH)
    last = zlib.compressobj(9, zlib.DEFLATED, -15)
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(megabyte, crc)
    crc = zlib.crc32(bytes(rest), crc)
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + repeated * count
            + last.compress(bytes(rest)) + last.flush()
            + struct.pack("<II", crc, size & 0xFFFFFFFF))  # fmt: skip


@functools.cache
def _over_the_limit() -> bytes:
    """A body of 4 KB that decodes to one byte more than --max-message-bytes."""
    return _gzip_bomb(LIMIT + 1)


@st.composite
def headers_for(draw: st.DrawFn, call: Call) -> Call:
    """Random Content-Type, Connect-Timeout-Ms, x-request-id, Content-Encoding and chunking."""
    headers = call.headers
    if _one_in(draw, 4):
        headers["Content-Type"] = draw(st.sampled_from(CONTENT_TYPES) | HEADER_TEXT)
    if _one_in(draw, 5):
        headers["Connect-Timeout-Ms"] = draw(st.sampled_from(TIMEOUTS) | HEADER_TEXT)
    if _one_in(draw, 4):
        headers["x-request-id"] = draw(REQUEST_IDS)
    if _one_in(draw, 10):
        headers["Expect"] = draw(st.sampled_from(["100-continue", "200-ok", ""]))
    if _one_in(draw, 10):
        headers["Accept-Encoding"] = draw(st.sampled_from(["gzip", "br", "*", "x;q=junk"]))
    if call.body is not None and _one_in(draw, 8):
        encoding = draw(st.sampled_from(["gzip", "deflate", "br", "zstd", "identity", "xyz"]))
        headers["Content-Encoding"] = encoding
        if draw(st.booleans()):
            if encoding == "gzip":
                call.body = gzip.compress(call.body)
            elif encoding == "deflate":
                call.body = zlib.compress(call.body)
        elif encoding in ("gzip", "deflate") and draw(st.booleans()):
            call.body = _over_the_limit()
    call.chunked = call.body is not None and _one_in(draw, 8)
    return call


@st.composite
def framing_calls(draw: st.DrawFn) -> Call:
    """Malformed HTTP/1.1 framing, sent over a socket as it is."""
    method = draw(st.sampled_from([b"GET", b"POST", b"POST", b"G\x00T", b"", b"PRI", b"GET /"]))
    target = draw(st.sampled_from([b"/v2/health/live", b"/v2/models/fashion/infer",
                                   b"/convserve.v1.ConvServe/Predict", b"*", b"",
                                   b"http://example.invalid/v2", b"/v2 /x", b"/\xff\x00",
                                   b"/" + b"a" * 10_000]))  # fmt: skip
    version = draw(st.sampled_from([b"HTTP/1.1"] * 4 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9.9",
                                                        b"HTTP/1", b"", b"http/1.1"]))  # fmt: skip
    body = draw(st.binary(max_size=64) | st.just(b'{"inputs":[]}'))
    lines = [b"Host: 127.0.0.1", b"Connect-Timeout-Ms: 2000"]
    framing = draw(st.sampled_from(["length", "length", "chunked", "none"]))
    if framing == "length":
        lines.append(b"Content-Length: %d" % len(body))
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    for _ in range(draw(st.integers(0, 3))):
        lines.append(draw(st.sampled_from([
            b"Content-Length: -1", b"Content-Length: abc", b"Content-Length: 1, 2",
            b"Content-Length: 0", b"Content-Length: 99999999999999999999999",
            b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked",
            b"Transfer-Encoding: identity", b"No colon here", b" folded: line",
            b"X-Obs: a\r\n folded", b"Bad Name: x", b"X-Nul: a\x00b", b"X-Big: " + b"b" * 9000,
            b"Host: second.invalid", b": no name", b"Content-Type: application/json",
            b"Inference-Header-Content-Length: 5", b"x-request-id: \xff\xfe",
            b"Expect: 100-continue", b"Upgrade: h2c", b"Connection: Upgrade, HTTP2-Settings",
        ])))  # fmt: skip
    end = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"]))
    head = method + b" " + target + (b" " + version if version else b"") + end
    raw = head + b"".join(line + end for line in lines) + end + body
    if _one_in(draw, 6):
        raw = draw(st.binary(min_size=1, max_size=200)) + b"\r\n\r\n"
    if _one_in(draw, 8):  # a well-formed request, then junk on the same connection
        raw = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n" + raw
    path = target.decode("latin-1").split(" ")[0] or "/"
    return Call(method.decode("latin-1"), path, raw=raw, kind="framing")


@st.composite
def http_calls(draw: st.DrawFn) -> Call:
    kind = draw(st.sampled_from(["infer"] * 4 + ["binary"] * 3 + ["connect"] * 3
                                + ["route"] * 2 + ["repository", "framing", "big"]))  # fmt: skip
    if kind == "framing":
        return draw(framing_calls())
    if kind == "big":
        return draw(big_calls())
    strategy = {"infer": infer_calls, "binary": binary_calls, "connect": connect_calls,
                "route": route_calls, "repository": repository_calls}[kind]  # fmt: skip
    return draw(headers_for(draw(strategy())))


# --- the property ---


def _deadline_given(call: Call) -> bool:
    value = call.headers.get("Connect-Timeout-Ms")
    return value is not None and value.isascii() and value.isdigit() and len(value) <= 10


def _problems(call: Call, answer: Answer) -> dict[str, str]:
    """What is wrong with `answer` to `call`, by kind: "status" (a 5xx), "request id" (none,
    or not the caller's), "json" (an error not in the API's JSON). Empty: the door did its job."""
    status, headers, body, _ = answer
    problems = {}
    # A call past the deadline its caller set is answered 504 deadline_exceeded (the Connect
    # protocol's status for it): the caller's own limit, not a server failure.
    late = status == 504 and _deadline_given(call) and b"deadline" in body
    closed = call.raw is not None and status == 0  # a socket closed on junk framing
    if not (200 <= status < 300 or 400 <= status < 500 or late or closed):
        problems["status"] = f"status {status}"
    if answer.refused_by_parser or status == 0:
        return problems  # no route saw it: a 4xx (or a closed socket) is all there is to ask
    sent_id = call.headers.get("x-request-id", "")
    if "x-request-id" not in headers:
        problems["request id"] = "no x-request-id header"
    elif re.fullmatch(r"[A-Za-z0-9_.-]+", sent_id) and headers["x-request-id"] != sent_id[:128]:
        problems["request id"] = f"x-request-id {headers['x-request-id']!r}, sent {sent_id!r}"
    # An unknown Expect on a path no route serves is refused by aiohttp before any route
    # or middleware of ours: its 417 is aiohttp's text (with our request id).
    unrouted_expect = status == 417 and b"Unknown Expect" in body
    if status >= 400 and call.method != "HEAD" and not unrouted_expect:
        try:
            error = json.loads(body)
        except ValueError:
            error = None
        is_dict = isinstance(error, dict)
        connect_error = (
            is_dict and error.get("code") in CONNECT_CODES and isinstance(error.get("message"), str)
        )
        # {"ready": false} is how a model, or the server, not ready answers (400).
        v2_error = is_dict and (isinstance(error.get("error"), str) or error.get("ready") is False)
        if call.method == "CONNECT":  # its target is an authority, not a path: either API's
            expected, shape = connect_error or v2_error, "a JSON error"
        elif call.route.startswith(CONNECT_PREFIXES):
            expected, shape = connect_error, '{"code": CODE, "message": TEXT}'
        else:
            expected, shape = v2_error, '{"error": TEXT}'
        if not headers.get("content-type", "").startswith("application/json"):
            problems["json"] = f"an error as {headers.get('content-type')!r}, not JSON"
        elif not expected:
            problems["json"] = f"an error that is not {shape}"
    return problems


def _server_log(door: Door, request_id: str | None) -> str:
    """The server's log lines about `request_id` (a traceback, for a 500), else its tail."""
    lines = door.log.read_text(errors="replace").splitlines()
    if request_id:
        for index, line in enumerate(lines):
            if f"(request id {request_id})" in line:
                end = index + 1
                while end < len(lines) and not re.match(r"\d{4}-\d\d-\d\d ", lines[end]):
                    end += 1
                return "\n".join(lines[index:end])
    return "(nothing about this request; its last lines:)\n" + "\n".join(lines[-10:])


def _pixels_as_json(images: int) -> Call:
    """`images` black images to fashion as JSON numbers: 2,600 are 4 MB, the most there is."""
    values = {"name": "images", "datatype": "UINT8", "shape": [images, 784],
              "data": [0] * (images * 784)}  # fmt: skip
    body = json.dumps({"inputs": [values]}, separators=(",", ":")).encode()
    return Call("POST", "/v2/models/fashion/infer", body=body, kind="pixels")


def _warm_up(door: Door) -> None:
    """The largest requests there are, each a few times, before the memory is measured: every
    lazy initialisation done, and each buffer size the server allocates seen."""
    tensor = {"name": "images", "datatype": "UINT8", "shape": [4096, 784],
              "parameters": {"binary_data_size": 4096 * 784}}  # fmt: skip
    head = json.dumps({"inputs": [tensor]}).encode()
    binary = {"Inference-Header-Content-Length": str(len(head))}
    pixels = Call("POST", "/v2/models/fashion/infer", binary, head + bytes(4096 * 784))
    text = _pixels_as_json(2600)
    files = {"name": "images", "datatype": "BYTES", "shape": [2],
             "data": [_base64(_bomb_png(5_000)), _base64(_good_png())]}  # fmt: skip
    explain = [{"name": name} for name in ("probabilities", "gradcam", "occlusion", "conv2d")]
    decoded = Call("POST", "/v2/models/cam/infer",
                   body=json.dumps({"inputs": [files], "outputs": explain}).encode())  # fmt: skip
    for _ in range(3):
        for call in (pixels, text, decoded):
            answer = _send(door, call)
            assert answer.status == 200, answer


def _reload_models(door: Door) -> None:
    """After an unload answered 200: every model back, so later calls reach them."""
    for model in MODELS:
        answer = _send(door, Call("POST", f"/v2/repository/models/{model}/load"))
        assert answer.status == 200, answer


def test_no_http_request_gets_a_5xx_kills_the_server_or_grows_its_memory(door: Door) -> None:
    seen: collections.Counter[str] = collections.Counter()
    _warm_up(door)
    rss_before = _rss_mb(door.process.pid)

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.large_base_example])  # fmt: skip
    @given(call=http_calls())
    def one_call(call: Call) -> None:
        started = time.monotonic()
        try:
            answer = _send(door, call)
        except TimeoutError:
            answer = None
        except OSError as exc:
            state = "running" if door.process.poll() is None else "dead"
            raise AssertionError(f"{exc!r}; the server is {state}; sent {call!r}\n"
                                 f"{_server_log(door, None)}") from exc  # fmt: skip
        seconds = time.monotonic() - started
        assert answer is not None, f"no answer in {seconds:.0f} s to {call!r}"
        problems = _problems(call, answer)
        report = (
            f"{', '.join(problems.values())}\nsent: {call!r}\nanswer: {answer.status} "
            f"{answer.headers} {answer.body[:600]!r}\nserver log:\n"
            f"{_server_log(door, answer.headers.get('x-request-id'))}"
        )
        # One assertion per kind of problem: hypothesis reports (and shrinks) each on its own.
        assert "status" not in problems, report
        assert "request id" not in problems, report
        assert "json" not in problems, report
        assert door.process.poll() is None, _server_log(door, None)
        if answer.status == 200 and "unload" in call.route.lower():
            _reload_models(door)
        if call.raw is not None:  # still serving after the junk
            assert _send(door, Call("GET", "/v2/health/live")).status == 200
        seen[f"{call.kind} {answer.status}{' (parser)' * answer.refused_by_parser}"] += 1

    one_call()
    cases = sum(seen.values())
    assert cases >= EXAMPLES and door.process.poll() is None
    assert _send(door, Call("GET", "/v2/health/ready")).status == 200
    rss = _rss_mb(door.process.pid)
    print(f"\nhttp fuzz: {cases} cases, RSS {rss_before:.0f} MB after the warm-up, {rss:.0f} MB "
          f"now; {dict(sorted(seen.items()))}")  # fmt: skip
    # After the warm-up (the largest requests there are: 4 MB of JSON for 2,600 images,
    # 4,096 images as bytes, a 25-megapixel PNG, explanations; lazy initialisation done),
    # 3,000 and 10,000 cases moved the RSS by 4 to 9 MB. 50 MB fails a leak of 170 KB a case
    # in 300 cases, of 5 KB a case in 10,000.
    assert rss - rss_before < 50
    statuses = {key.split(" ")[1] for key in seen}
    assert {"200", "400", "404"} <= statuses  # the cases reached answers of several kinds


def test_a_compressed_bomb_is_refused_without_stalling_or_growing_the_server(door: Door) -> None:
    """512 MB of zeros as 512 KB of gzip (an eighth of --max-message-bytes), three times: each
    refused (415: the server takes no compressed bodies, it never inflates one), the server
    answering others the while, and holding no more memory after."""
    bomb = Call("POST", "/v2/models/fashion/infer",
                {"Content-Type": "application/json", "Content-Encoding": "gzip"},
                _gzip_bomb(512 << 20), kind="bomb")  # fmt: skip
    _warm_up(door)
    rss_before = _rss_mb(door.process.pid)
    answers: list[Answer] = []
    sent = threading.Thread(target=lambda: answers.extend(_send(door, bomb) for _ in range(3)))
    sent.start()
    while sent.is_alive():
        assert _send(door, Call("GET", "/v2/health/live")).status == 200
        time.sleep(0.01)
    sent.join()
    rss = _rss_mb(door.process.pid)
    assert [answer.status for answer in answers] == [415] * 3, answers
    assert not any(_problems(bomb, answer) for answer in answers), answers
    assert rss - rss_before < 50, f"RSS {rss_before:.0f} MB before the bombs, {rss:.0f} after"


def test_a_model_unloaded_and_loaded_again_leaves_no_memory_behind(door: Door) -> None:
    """What the fuzz's unload calls showed: five unload/load cycles of fashion, each followed by
    a 2,600-image request (ONNX Runtime's arena of the version loaded grows to hold it), leave
    the RSS where one leaves it: the versions unloaded are freed."""
    _warm_up(door)
    rss_before = _rss_mb(door.process.pid)
    big = _pixels_as_json(2600)
    for _ in range(5):
        for action in ("unload", "load"):
            answer = _send(door, Call("POST", f"/v2/repository/models/fashion/{action}"))
            assert answer.status == 200, answer
        assert _send(door, big).status == 200
    rss = _rss_mb(door.process.pid)
    assert rss - rss_before < 50, f"RSS {rss_before:.0f} MB before five reloads, {rss:.0f} after"
