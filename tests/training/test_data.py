"""Image folders: the classes, the split and the input they make, and a clear error for bad
data before any training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convserve.fashion_mnist import DataError
from training import data


def folder(root: Path, counts: dict[str, int], size: tuple[int, int] = (12, 10),
           mode: str = "L") -> Path:  # fmt: skip
    """root/<class>/<i>.png of `size` (width, height), a different image each."""
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).convert(mode).save(root / name / f"{index}.png")
    return root


def test_classes_are_the_sorted_folder_names_and_the_held_out_images_are_never_trained_on(
    tmp_path: Path,
) -> None:
    scanned = data.scan(folder(tmp_path, {"zebra": 10, "apple": 5}), test_split=0.2)
    assert scanned.class_names == ("apple", "zebra")
    assert scanned.shape == (10, 12, 1)
    assert scanned.preprocessing.color == "grayscale"
    train, test = set(scanned.train_files), set(scanned.test_files)
    assert not train & test and len(train | test) == 15
    assert sorted(label for _, label in scanned.test_files) == [0, 1, 1]  # 20% of each class
    assert data.scan(tmp_path, test_split=0.2).test_files == scanned.test_files  # seeded
    train_set, test_set = scanned.load(seed=0)
    assert train_set.images.shape == (12, 10, 12, 1) and test_set.images.dtype == np.uint8


def test_a_train_and_test_split_of_its_own_is_used_as_it_is(tmp_path: Path) -> None:
    folder(tmp_path / "train", {"a": 4, "b": 4})
    folder(tmp_path / "test", {"a": 2, "b": 1}, mode="RGB")
    scanned = data.scan(tmp_path)
    assert len(scanned.train_files) == 8 and len(scanned.test_files) == 3
    assert all("test" in path.parts for path, _ in scanned.test_files)
    assert scanned.preprocessing.color == "rgb"  # some images have colour


def test_mixed_sizes_need_an_image_size(tmp_path: Path) -> None:
    folder(tmp_path, {"a": 3, "b": 3})
    folder(tmp_path, {"c": 2}, size=(20, 16))
    with pytest.raises(
        DataError, match=r"2 sizes .* 10x12 \(6 files\) and 16x20 .*--image-size 10x12"
    ):
        data.scan(tmp_path)
    scanned = data.scan(tmp_path, image_size=(16, 16), color="rgb", interpolation="nearest")
    assert scanned.shape == (16, 16, 3)
    train_set, _ = scanned.load(seed=0)
    assert train_set.images.shape[1:] == (16, 16, 3)


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ({"a": 5}, r"1 class folder \(a\); a classifier needs at least 2"),
        ({"a": 5, "b": 1}, r"/b: 1 image; holding out 20% for testing needs at least 2 per class"),
    ],
)
def test_too_few_classes_or_images_are_refused_naming_the_folder(
    tmp_path: Path, counts: dict[str, int], message: str
) -> None:
    with pytest.raises(DataError, match=message):
        data.scan(folder(tmp_path, counts))


def test_an_empty_class_folder_is_refused(tmp_path: Path) -> None:
    folder(tmp_path, {"a": 3})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"/b: no PNG or JPEG images"):
        data.scan(tmp_path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[: len(data) // 2], "cannot decode it"),  # truncated
        (lambda data: b"GIF89a" + data[6:], "not a PNG or JPEG file"),
    ],
)
def test_a_bad_image_is_refused_naming_the_file_before_training(
    tmp_path: Path, damage, message: str
) -> None:
    folder(tmp_path, {"a": 3, "b": 3})
    bad = tmp_path / "b" / "1.png"
    bad.write_bytes(damage(bad.read_bytes()))
    with pytest.raises(DataError, match=f"{bad}: {message}"):
        data.scan(tmp_path).load(seed=0)  # what training does before it fits


def test_train_refuses_image_options_without_a_folder() -> None:
    from training.model import PRESETS, ConfigError

    with pytest.raises(ConfigError, match="apply to a folder of images"):
        PRESETS["small"].replace(image_size=(32, 32)).check()


def test_a_conv_that_does_not_fit_the_folders_images_is_refused_before_decoding(
    tmp_path: Path,
) -> None:
    from training.model import PRESETS, ConfigError, ConvLayer, ModelConfig
    from training.train import fit

    config = PRESETS["small"].replace(
        images=str(folder(tmp_path, {"a": 3, "b": 3}, size=(8, 6))),
        model=ModelConfig(conv=(ConvLayer(4, 7),)),
    )
    with pytest.raises(ConfigError, match=r"kernel 7 is larger than its 6x8 input"):
        fit(config, verbose=0)


def test_limits_keep_the_first_images_of_each_split(tmp_path: Path) -> None:
    scanned = data.scan(folder(tmp_path, {"a": 6, "b": 6}))
    train_set, test_set = scanned.load(seed=3)
    first_train, first_test = scanned.load(seed=3, train_limit=4, test_limit=1)
    assert (first_train.images == train_set.images[:4]).all()
    assert (first_train.labels == train_set.labels[:4]).all()
    assert (first_test.images == test_set.images[:1]).all() and len(first_test) == 1
