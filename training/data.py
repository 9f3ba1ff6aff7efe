"""A folder of the user's images as training and test splits.

The layout Keras's `image_dataset_from_directory` reads: DIR/<class>/…/*.png|jpg, one
subfolder per class, the folder names (sorted) the class names; or DIR/train/<class> and
DIR/test/<class> for a split of the user's own. The images are decoded by
convserve.imagefiles, the code the server decodes requests with, so a PNG sent to the server
becomes the same pixels as in training. Every file is read (`scan`: its header; `load`: all of
it, once) before training starts: a bad one is an error naming it, not a crash in the middle
of a fit.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from convserve import imagefiles
from convserve.artifact import COLORS, Preprocessing
from convserve.fashion_mnist import DataError, Dataset

__all__ = ["EXTENSIONS", "PIXEL_SCALE", "Folder", "scan"]

EXTENSIONS = frozenset({".png", ".jpg", ".jpeg"})
Labelled = tuple[Path, int]  # an image file and its class index
T = TypeVar("T")
PIXEL_SCALE = 1.0 / 255.0


@dataclass(frozen=True)
class Folder:
    """An image folder, scanned: its classes, files per split, and the input they make."""

    root: Path
    class_names: tuple[str, ...]
    train_files: tuple[Labelled, ...]  # (file, label)
    test_files: tuple[Labelled, ...]
    shape: tuple[int, int, int]  # height, width, channels
    preprocessing: Preprocessing
    split: str  # how the test images were chosen, for the model card

    def load(
        self, seed: int, train_limit: int | None = None, test_limit: int | None = None
    ) -> tuple[Dataset, Dataset]:
        """The training split (shuffled with `seed`: validation takes its tail) and the test
        split, decoded as the server will decode requests; the first `train_limit` and
        `test_limit` images of each, if given (only those are decoded)."""
        order = np.random.default_rng(seed).permutation(len(self.train_files))
        train = [self.train_files[i] for i in order][:train_limit]
        return self._decode(train), self._decode(list(self.test_files[:test_limit]))

    def _decode(self, files: list[Labelled]) -> Dataset:
        images = np.empty((len(files), *self.shape), np.uint8)
        for index, (path, _) in enumerate(files):
            images[index] = _read(path, imagefiles.decode, self.shape, self.preprocessing)
        labels = np.array([label for _, label in files], np.int64)
        return Dataset(images, labels, self.class_names, self.root)


def scan(
    root: Path,
    *,
    image_size: Sequence[int] = (),
    color: str = "",
    interpolation: str = "bilinear",
    test_split: float = 0.2,
    classes: Sequence[str] = (),
    seed: int = 0,
) -> Folder:
    """Read every image's header and settle the input: `image_size`
    (height, width; default: the images' size, which must then be the same for all), `color`
    (default: rgb if any image has colour, else grayscale). Without DIR/train and DIR/test,
    a seeded `test_split` of each class is the test set."""
    if not root.is_dir():
        raise DataError(f"{root}: not a directory of images (one subfolder per class)")
    if (root / "train").is_dir() and (root / "test").is_dir():
        names = _class_folders(root / "train", classes)
        train = _files(root / "train", names)
        test = _files(root / "test", names)
        split = f"{root / 'test'} (the folder's own split)"
    else:
        names = _class_folders(root, classes)
        train, test = _hold_out(_files(root, names), root, names, test_split, seed)
        split = f"a seeded {test_split:.0%} of each class's images, never trained on"
    infos = {path: _read(path, imagefiles.inspect) for path, _ in (*train, *test)}
    height, width = _size(infos, image_size, root)
    color = color or ("rgb" if any(i.color == "rgb" for i in infos.values()) else "grayscale")
    channels = {name: count for count, name in COLORS.items()}[color]
    return Folder(
        root=root,
        class_names=tuple(names),
        train_files=tuple(train),
        test_files=tuple(test),
        shape=(height, width, channels),
        preprocessing=Preprocessing(PIXEL_SCALE, 0.0, color, interpolation),
        split=split,
    )


def _class_folders(directory: Path, wanted: Sequence[str]) -> list[str]:
    found = sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if wanted:
        unknown = [name for name in wanted if name not in found]
        if unknown:
            raise DataError(
                f"{directory}: no class folder {', '.join(map(repr, unknown))}; "
                f"found {', '.join(found) or 'none'}"
            )
        found = list(wanted)
    if len(found) < 2:
        raise DataError(
            f"{directory}: {len(found)} class folder{'s' if len(found) != 1 else ''} "
            f"({', '.join(found) or 'none'}); a classifier needs at least 2: one subfolder of "
            "images per class"
        )
    return found


def _files(directory: Path, names: list[str]) -> list[Labelled]:
    files: list[Labelled] = []
    for label, name in enumerate(names):
        found = sorted(
            p for p in (directory / name).rglob("*")
            if p.suffix.lower() in EXTENSIONS and p.is_file()
        )  # fmt: skip
        if not found:
            raise DataError(f"{directory / name}: no PNG or JPEG images in this class folder")
        files.extend((path, label) for path in found)
    return files


def _hold_out(
    files: list[Labelled], root: Path, names: list[str], fraction: float, seed: int
) -> tuple[list[Labelled], list[Labelled]]:
    """Each class's seeded `fraction` (at least one image) for testing, the rest for training."""
    if not 0 < fraction < 1:
        raise DataError(f"test_split must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    train: list[Labelled] = []
    test: list[Labelled] = []
    for label, name in enumerate(names):
        own = [entry for entry in files if entry[1] == label]
        held = max(1, round(len(own) * fraction))
        if len(own) - held < 1:
            raise DataError(
                f"{root / name}: {len(own)} image{'s' if len(own) != 1 else ''}; holding out "
                f"{fraction:.0%} for testing needs at least 2 per class (one to train on, "
                "one to test)"
            )
        order = rng.permutation(len(own))
        test.extend(own[i] for i in sorted(order[:held]))
        train.extend(own[i] for i in sorted(order[held:]))
    return train, test


def _read(path: Path, read: Callable[..., T], *args: Any) -> T:
    """`read(the file's bytes, *args)`; a file that cannot be read is a DataError naming it."""
    try:
        return read(path.read_bytes(), *args)
    except (OSError, imagefiles.ImageFileError) as exc:
        raise DataError(f"{path}: {exc}") from None


def _size(
    infos: dict[Path, imagefiles.ImageInfo], image_size: Sequence[int], root: Path
) -> tuple[int, int]:
    if image_size:
        height, width = image_size
        if height < 1 or width < 1:
            raise DataError(f"image size {height}x{width}: expected positive HxW")
        return height, width
    sizes = collections.Counter((i.height, i.width) for i in infos.values())
    if len(sizes) > 1:
        (common, count), (other, _) = sizes.most_common(2)
        example = next(path for path, i in infos.items() if (i.height, i.width) == other)
        raise DataError(
            f"{root}: images of {len(sizes)} sizes (HxW), e.g. {common[0]}x{common[1]} "
            f"({count} files) and {other[0]}x{other[1]} ({example}); choose the size to resize "
            f"them to with --image-size HxW, e.g. --image-size {common[0]}x{common[1]} (the most "
            "common)"
        )
    (height, width), _ = sizes.most_common(1)[0]
    return height, width
