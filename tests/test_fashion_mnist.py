"""The Fashion-MNIST reader against the real Debian files and against broken copies of them."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from convserve import fashion_mnist as data


@pytest.fixture(scope="module")
def test_split() -> data.Dataset:
    return data.load("test")


def _write_idx(path: Path, payload: bytes, *, compress: bool = True) -> Path:
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def _header(ndim: int, *dims: int, dtype: int = 0x08) -> bytes:
    return bytes([0, 0, dtype, ndim]) + b"".join(d.to_bytes(4, "big") for d in dims)


def test_reads_the_real_test_split(test_split: data.Dataset) -> None:
    assert test_split.images.shape == (10_000, 28, 28)
    assert test_split.images.dtype == np.uint8
    assert test_split.class_names == data.CLASS_NAMES
    # Fashion-MNIST's test split is balanced: 1,000 images per class.
    assert np.bincount(test_split.labels).tolist() == [1000] * 10
    assert 0 < test_split.images.mean() < 255


def test_reads_the_real_train_split_with_a_limit() -> None:
    train = data.load("train", limit=500)
    assert train.images.shape == (500, 28, 28)
    assert len(train) == 500


def test_class_subset_is_relabelled_in_the_given_order(test_split: data.Dataset) -> None:
    subset = data.load("test", classes=["ankle boot", "Shirt", "Dress"])
    assert subset.class_names == ("Ankle boot", "Shirt", "Dress")
    assert len(subset) == 3000
    assert sorted(set(subset.labels.tolist())) == [0, 1, 2]
    # Each remapped image is the same pixels as the original with that original label.
    original = {name: label for label, name in enumerate(data.CLASS_NAMES)}
    for new_label, name in enumerate(subset.class_names):
        expected = test_split.images[test_split.labels == original[name]]
        np.testing.assert_array_equal(subset.images[subset.labels == new_label], expected)


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["Shirt", "Socks"], "unknown class 'Socks'; expected one of: T-shirt/top"),
        (["Shirt", "shirt"], "class 'shirt' is named twice"),
        (["Shirt"], "at least 2 classes"),
    ],
)
def test_bad_class_names_are_rejected(names: list[str], message: str) -> None:
    with pytest.raises(data.DataError, match=message.replace("(", r"\(")):
        data.resolve_classes(names)


@pytest.fixture
def copy_dir(tmp_path: Path) -> Path:
    """A copy of the real test split that a test may break."""
    source, copy = data.find_data_dir(), tmp_path / "copy"
    copy.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(source / name, copy / name)
    return copy


def test_data_dir_copy_loads_like_the_original(copy_dir: Path, test_split: data.Dataset) -> None:
    copy = data.load("test", data_dir=copy_dir)
    np.testing.assert_array_equal(copy.images, test_split.images)
    assert copy.source == copy_dir


def test_keras_cache_is_the_fallback(
    copy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keras_home = tmp_path / "keras"
    (keras_home / "datasets").mkdir(parents=True)
    shutil.copytree(copy_dir, keras_home / "datasets" / "fashion-mnist")
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    monkeypatch.setattr(data, "DEBIAN_DATA_DIR", tmp_path / "not-installed")
    assert data.find_data_dir() == keras_home / "datasets" / "fashion-mnist"


def test_missing_dataset_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(data, "DEBIAN_DATA_DIR", tmp_path / "not-installed")
    with pytest.raises(data.DataError, match="apt-get install dataset-fashion-mnist"):
        data.find_data_dir()
    with pytest.raises(data.DataError, match="no Fashion-MNIST IDX files"):
        data.load("test", data_dir=tmp_path)


def test_truncated_file_is_named(copy_dir: Path) -> None:
    path = copy_dir / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    _write_idx(path, raw[:-100])
    with pytest.raises(
        data.DataError, match=r"t10k-images-idx3-ubyte\.gz: .* needs 7840016 \(truncated"
    ):
        data.load("test", data_dir=copy_dir)


def test_truncated_gzip_stream_is_named(copy_dir: Path) -> None:
    path = copy_dir / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(data.DataError, match=r"t10k-labels-idx1-ubyte\.gz: cannot read"):
        data.load("test", data_dir=copy_dir)


def test_wrong_magic_number_is_named(copy_dir: Path) -> None:
    # A labels file where the images file should be: 1 dimension instead of 3.
    labels = (copy_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (copy_dir / "t10k-images-idx3-ubyte.gz").write_bytes(labels)
    with pytest.raises(data.DataError, match=r"images-idx3-ubyte\.gz: bad magic number 0x00000801"):
        data.load("test", data_dir=copy_dir)


def test_wrong_count_is_named(copy_dir: Path) -> None:
    labels = np.zeros(9_999, dtype=np.uint8).tobytes()
    _write_idx(copy_dir / "t10k-labels-idx1-ubyte.gz", _header(1, 9_999) + labels)
    with pytest.raises(data.DataError, match="header says 9999 items, expected 10000"):
        data.load("test", data_dir=copy_dir)


def test_out_of_range_label_is_named(copy_dir: Path) -> None:
    labels = np.full(10_000, 10, dtype=np.uint8).tobytes()
    _write_idx(copy_dir / "t10k-labels-idx1-ubyte.gz", _header(1, 10_000) + labels)
    with pytest.raises(data.DataError, match="label 10 is out of range"):
        data.load("test", data_dir=copy_dir)


def test_uncompressed_idx_is_read(tmp_path: Path) -> None:
    pixels = np.arange(2 * 3 * 4, dtype=np.uint8)
    path = _write_idx(
        tmp_path / "x-idx3-ubyte", _header(3, 2, 3, 4) + pixels.tobytes(), compress=False
    )
    np.testing.assert_array_equal(data.read_idx(path, ndim=3), pixels.reshape(2, 3, 4))
