"""The byte-level Predict encoder gives exactly the message the plain construction gives."""

from __future__ import annotations

import numpy as np
import pytest

from convserve.api.codec import to_tensor
from convserve.api.pb.convserve.v1 import convserve_pb2 as pb
from service.responses import PredictEncoder

NAMES = (*(f"class {i}" for i in range(12)), "Ankle boot", "T-shirt/top", "ünïcode")


def plain(probabilities: np.ndarray, top_k: int, names: tuple[str, ...]) -> pb.PredictResponse:
    best = np.argsort(-probabilities, axis=1, kind="stable")[:, : min(top_k, len(names))]
    return pb.PredictResponse(
        model=pb.ModelSpec(name="fashion", version=7),
        probabilities=to_tensor(probabilities),
        predictions=[
            pb.Prediction(
                top=[pb.ClassScore(index=int(i), name=names[i], score=float(row[i])) for i in idx]
            )
            for row, idx in zip(probabilities, best, strict=True)
        ],
        class_names=names,
    )


@pytest.mark.parametrize(("images", "top_k"), [(1, 3), (5, 1), (64, 3), (3, 99), (64, 99)])
def test_encoder_equals_plain_construction(images: int, top_k: int) -> None:
    rng = np.random.default_rng(images)
    probabilities = rng.dirichlet(np.ones(len(NAMES)), size=images).astype(np.float32)
    probabilities[0, :2] = probabilities[0, 2]  # ties keep the lower index first
    encoded = pb.PredictResponse.FromString(
        PredictEncoder("fashion", 7, NAMES).encode(probabilities, top_k)
    )
    assert encoded == plain(probabilities, top_k, NAMES)
    assert encoded.predictions[0].top[0].name == NAMES[encoded.predictions[0].top[0].index]


def test_many_classes_need_two_byte_indices() -> None:
    names = tuple(f"c{i}" for i in range(200))
    probabilities = np.zeros((1, 200), np.float32)
    probabilities[0, 150] = 1
    encoded = pb.PredictResponse.FromString(PredictEncoder("m", 1, names).encode(probabilities, 2))
    assert [(s.index, s.name) for s in encoded.predictions[0].top] == [(150, "c150"), (0, "c0")]
