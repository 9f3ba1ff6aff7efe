"""Fashion-MNIST from local IDX files: Debian's dataset-fashion-mnist or the Keras cache.

numpy only, in the core: training fits on it, the client's commands and load tests send its
test images.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = [
    "CLASS_NAMES",
    "DEBIAN_DATA_DIR",
    "DataError",
    "Dataset",
    "find_data_dir",
    "load",
    "read_idx",
    "resolve_classes",
]

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

DEBIAN_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")

Split = Literal["train", "test"]
_FILE_PREFIX: dict[str, str] = {"train": "train", "test": "t10k"}
_EXPECTED_COUNT: dict[str, int] = {"train": 60_000, "test": 10_000}
_IDX_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


class DataError(ValueError):
    """The dataset is missing, truncated or not what it claims to be."""


@dataclass(frozen=True)
class Dataset:
    """Images as uint8 [N, 28, 28], labels as int64 [N] indexing `class_names`."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    source: Path

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def keras_cache_dir() -> Path:
    """Where `keras.datasets.fashion_mnist` keeps its files once fetched (KERAS_HOME aware)."""
    keras_home = os.environ.get("KERAS_HOME") or str(Path.home() / ".keras")
    return Path(keras_home) / "datasets" / "fashion-mnist"


def _has_split(directory: Path, split: str) -> bool:
    return all(
        _idx_path(directory, split, kind, required=False) is not None
        for kind in ("images", "labels")
    )


def find_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the IDX files are: `data_dir` if given, else Debian's, else the Keras cache."""
    if data_dir is not None:
        path = Path(data_dir)
        if not _has_split(path, "train") and not _has_split(path, "test"):
            raise DataError(
                f"{path}: no Fashion-MNIST IDX files (expected e.g. train-images-idx3-ubyte.gz)"
            )
        return path
    candidates = [DEBIAN_DATA_DIR, keras_cache_dir()]
    for path in candidates:
        if _has_split(path, "train") or _has_split(path, "test"):
            return path
    searched = ", ".join(str(p) for p in candidates)
    raise DataError(
        f"Fashion-MNIST not found (searched {searched}); install it with "
        "'apt-get install dataset-fashion-mnist' or pass --data-dir"
    )


def _idx_path(directory: Path, split: str, kind: str, *, required: bool = True) -> Path | None:
    ndim = 3 if kind == "images" else 1
    stem = f"{_FILE_PREFIX[split]}-{kind}-idx{ndim}-ubyte"
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    if required:
        raise DataError(f"{directory / (stem + '.gz')}: file not found")
    return None


def read_idx(path: Path, *, ndim: int, count: int | None = None) -> np.ndarray:
    """Read one IDX file of unsigned bytes (gzip or plain), checking its header against its size."""
    try:
        raw = path.read_bytes()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(f"{path}: {len(raw)} bytes is shorter than the {header_size}-byte header")
    zero, dtype_code, file_ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or dtype_code != _IDX_UBYTE or file_ndim != ndim:
        raise DataError(
            f"{path}: bad magic number 0x{raw[:4].hex()}, "
            f"expected 0x0000{_IDX_UBYTE:02x}{ndim:02x} (unsigned bytes, {ndim} dimensions)"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if count is not None and dims[0] != count:
        raise DataError(f"{path}: header says {dims[0]} items, expected {count}")
    expected = header_size + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(
            f"{path}: {len(raw)} bytes but the header {list(dims)} needs {expected} "
            "(truncated or trailing data)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


def resolve_classes(names: Sequence[str] | None) -> list[int]:
    """Map class names (case-insensitive, in the caller's order) to Fashion-MNIST labels."""
    if not names:
        return list(range(len(CLASS_NAMES)))
    by_name = {name.lower(): label for label, name in enumerate(CLASS_NAMES)}
    labels: list[int] = []
    for name in names:
        label = by_name.get(name.strip().lower())
        if label is None:
            raise DataError(f"unknown class {name!r}; expected one of: {', '.join(CLASS_NAMES)}")
        if label in labels:
            raise DataError(f"class {name!r} is named twice")
        labels.append(label)
    if len(labels) < 2:
        raise DataError(f"a classifier needs at least 2 classes, got {len(labels)}")
    return labels


def load(
    split: Split,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    classes: Sequence[str] | None = None,
    limit: int | None = None,
) -> Dataset:
    """Load one split; `classes` keeps those classes, relabelled 0..k-1 in the order given.

    `limit` keeps the first `limit` examples (after class selection): small slices for tests.
    """
    if split not in _FILE_PREFIX:
        raise DataError(f"unknown split {split!r}; expected 'train' or 'test'")
    directory = find_data_dir(data_dir)
    images_path = _idx_path(directory, split, "images")
    labels_path = _idx_path(directory, split, "labels")
    assert images_path is not None and labels_path is not None
    expected = _EXPECTED_COUNT[split]
    labels = read_idx(labels_path, ndim=1, count=expected)
    images = read_idx(images_path, ndim=3, count=expected)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{images_path}: images are {images.shape[1:]}, expected (28, 28)")
    if labels.max() >= len(CLASS_NAMES):
        raise DataError(f"{labels_path}: label {labels.max()} is out of range 0..9")

    wanted = resolve_classes(classes)
    remap = np.full(len(CLASS_NAMES), -1, dtype=np.int64)
    remap[wanted] = np.arange(len(wanted))
    new_labels = remap[labels]
    keep = np.flatnonzero(new_labels >= 0)
    if limit is not None:
        keep = keep[:limit]
    return Dataset(
        images=images[keep],
        labels=new_labels[keep],
        class_names=tuple(CLASS_NAMES[label] for label in wanted),
        source=directory,
    )
