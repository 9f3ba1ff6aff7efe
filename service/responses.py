"""PredictResponse encoding on the hot path: the top-k lists written as bytes, not objects.

Building one ClassScore message per class per image costs ~11 µs an image in Python
(0.7 ms for a 64-image request, more than the model itself); writing the same wire bytes
from per-class prefixes computed once costs a fraction of that. The result parses to
exactly the message the plain construction gives (a test holds them equal), and goes out
as it is: Predict is registered with a pass-through serializer.
"""

from __future__ import annotations

import struct

import numpy as np

from convserve.api.pb.convserve.v1 import convserve_pb2 as pb

__all__ = ["PredictEncoder"]

_FLOAT32 = bytes((0x08, pb.DATA_TYPE_FLOAT32))  # Tensor.dtype
# Up to this many images, the top-k lists are sorted in Python: numpy's argsort and fancy
# indexing cost more than they save on a few rows (and argsort releases the GIL, which
# gRPC's poller thread then takes). Both orders are stable: ties keep the lower index first.
SMALL_BATCH = 8


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field: key, length, payload."""
    size = len(payload)
    return bytes((tag, size)) + payload if size < 0x80 else bytes((tag,)) + _varint(size) + payload


class PredictEncoder:
    """Encodes Predict answers for one model version."""

    def __init__(self, name: str, version: int, class_names: tuple[str, ...]) -> None:
        self.class_names = class_names
        self._header = pb.PredictResponse(
            model=pb.ModelSpec(name=name, version=version), class_names=class_names
        ).SerializeToString()
        # Prediction.top entry: key, length, ClassScore{index = 1, name = 2, score = 3 (fixed32)}
        # up to the score's 4 bytes, which are the only part that varies.
        self._prefix = [
            _field(
                0x0A, b"\x08" + _varint(index) + _field(0x12, label.encode()) + b"\x1d" + bytes(4)
            )[:-4]
            for index, label in enumerate(class_names)
        ]

    def encode(self, probabilities: np.ndarray, top_k: int) -> bytes:
        """Float32 [N, classes] → the PredictResponse's wire bytes (grpc sends them as they are)."""
        images = len(probabilities)
        if images <= SMALL_BATCH:
            rows = probabilities.tolist()
            best = [
                sorted(range(len(row)), key=row.__getitem__, reverse=True)[:top_k] for row in rows
            ]
            top = [row[index] for row, indices in zip(rows, best, strict=True) for index in indices]
            scores = struct.pack(f"<{len(top)}f", *top)  # float32 values: packed exactly
        else:
            order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
            scores = probabilities[np.arange(images)[:, None], order].astype("<f4").tobytes()
            best = order.tolist()
        prefix = self._prefix
        parts = [self._header, _field(0x12, self._tensor(probabilities))]
        position = 0
        for indices in best:
            entries: list[bytes] = []
            for index in indices:
                entries += (prefix[index], scores[position : position + 4])
                position += 4
            parts.append(_field(0x1A, b"".join(entries)))  # PredictResponse.predictions
        return b"".join(parts)

    @staticmethod
    def _tensor(probabilities: np.ndarray) -> bytes:
        """Tensor{dtype = FLOAT32, shape (packed), content}."""
        shape = b"".join(_varint(size) for size in probabilities.shape)
        content = probabilities.astype("<f4", copy=False).tobytes()
        return _FLOAT32 + _field(0x12, shape) + _field(0x1A, content)
