"""What operators watch: request ids in the answers, and the metrics page."""

from __future__ import annotations

import re
from typing import Any

import grpc
import pytest

from client.client import predict_request
from convserve.api.pb.convserve.v1 import convserve_pb2 as pb
from convserve.api.pb.convserve.v1 import convserve_pb2_grpc as pb_grpc
from convserve.fashion_mnist import Dataset


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, f"{name} not on the metrics page"
    return float(match.group(1))


def test_every_answer_carries_the_request_id(server: Any, test_images: Dataset) -> None:
    request = predict_request(test_images.images[:1], None, None, 3)
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ConvServeStub(channel)
        _, call = stub.Predict.with_call(request, metadata=(("x-request-id", "req-42"),))
        assert dict(call.trailing_metadata())["x-request-id"] == "req-42"
        _, call = stub.Predict.with_call(request)
        assert re.fullmatch(r"[0-9a-f]{32}", dict(call.trailing_metadata())["x-request-id"])
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(
                pb.PredictRequest(model=pb.ModelSpec(name="nope")),
                metadata=(("x-request-id", "req-43"),),
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert dict(caught.value.trailing_metadata())["x-request-id"] == "req-43"


def test_queue_wait_inference_time_and_inflight_are_exported(
    server: Any, test_images: Dataset
) -> None:
    before = server.scrape()
    request = predict_request(test_images.images[:3], None, None, 3)
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ConvServeStub(channel)
        for _ in range(5):
            stub.Predict(request)
    after = server.scrape()
    for name in (
        'convserve_queue_wait_seconds_count{model="fashion"}',
        'convserve_inference_seconds_count{model="fashion"}',
    ):
        assert metric(after, name) >= metric(before, name) + 5
    assert metric(after, 'convserve_inflight_requests{method="Predict"}') == 0
