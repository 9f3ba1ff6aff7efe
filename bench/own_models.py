"""Bring your own images and models, end to end, with the figures: accuracy and equality.

    .venv/bin/python bench/own_models.py [--work DIR] [--per-class 1000] [--preset seed]

Writes an image folder from Fashion-MNIST (Trouser, Bag, Sneaker; 32x32 RGB PNG files), trains
on it, imports the tests' ONNX classifier (NCHW RGB 20x24, logits) and Keras functional model
(a skip connection), serves all three with `convserve serve` and prints, over the wire: the
folder model's accuracy on its held-out files sent as PNG, and the largest difference of each
model's answers from its source (Keras; ONNX Runtime on the source graph). Numbers, not a test
(tests/integration/test_own_models.py holds the same to 1e-5 on smaller runs).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from common import ROOT, start_convserve, stop

from client import Client
from convserve import imagefiles

sys.path.insert(0, str(ROOT))  # the examples live with the tests
from tests.own_models import (
    EASY,
    OFFSET,
    ONNX_SHAPE,
    SCALE,
    keras_classifier,
    onnx_classifier,
    write_folder,
)
from training import data
from training.importer import import_model
from training.model import PRESETS
from training.publish import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="where to write (default: a new temp dir)")
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--preset", default="seed")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="own-models-"))
    models, folder = work / "models", write_folder(work / "images", args.per_class)
    config = PRESETS[args.preset].replace(images=str(folder))
    version, result = train(config, name="folder", models_dir=models, verbose=0, report=False)
    print(f"folder model: {result.train_examples} training images, test accuracy "
          f"{result.test_accuracy:.4f} on {result.test_examples} held out (Keras)")  # fmt: skip
    sources = {
        "onnx": onnx_classifier(work / "net.onnx"),
        "keras": keras_classifier(work / "skip.keras"),
    }
    for name, source in sources.items():
        import_model(source, name=name, classes=EASY, models_dir=models, scale=SCALE, offset=OFFSET)

    scanned = data.scan(folder)
    files = [path.read_bytes() for path, _ in scanned.test_files]
    labels = np.array([label for _, label in scanned.test_files])
    rng = np.random.default_rng(0)
    onnx_pixels = rng.integers(0, 256, (256, *ONNX_SHAPE[1:], 3)).astype(np.uint8)
    keras_pixels = rng.integers(0, 256, (256, 24, 20, 3)).astype(np.uint8)
    server, target, _, _ = start_convserve(models, "folder")
    try:
        with Client(target) as client:
            served = np.concatenate([client.predict(files[i : i + 500]).probabilities
                                     for i in range(0, len(files), 500)])  # fmt: skip
            onnx_served = client.predict(onnx_pixels, model="onnx").probabilities
            relu = client.feature_map(onnx_pixels, model="onnx", layer="features.0",
                                      pre_activation=True)  # fmt: skip
            keras_served = client.predict(keras_pixels, model="keras").probabilities
    finally:
        stop(server)

    import keras

    pixels = np.stack([imagefiles.decode(f, scanned.shape, scanned.preprocessing) for f in files])
    expected = keras.models.load_model(version / "model.keras", compile=False).predict(
        pixels / np.float32(255), batch_size=1000, verbose=0
    )
    print(f"folder model over the wire, {len(files)} held-out PNG files: accuracy "
          f"{(served.argmax(1) == labels).mean():.4f}; max |served - Keras| "
          f"{np.abs(served - expected).max():.2e}")  # fmt: skip

    model = onnx.load(sources["onnx"])
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in ("c1", "r1"))
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    inputs = (onnx_pixels * np.float32(SCALE) + np.float32(OFFSET)).transpose(0, 3, 1, 2)
    logits, c1, r1 = session.run(None, {"input": inputs})
    print(f"ONNX import, 256 random images: max |served - softmax(ONNX Runtime on the source)| "
          f"{np.abs(onnx_served - _softmax(logits)).max():.2e}; FeatureMap features.0 "
          f"{np.abs(relu.activations - r1.transpose(0, 2, 3, 1)).max():.2e}, pre-activations "
          f"{np.abs(relu.pre_activations - c1.transpose(0, 2, 3, 1)).max():.2e}")  # fmt: skip
    source = keras.models.load_model(sources["keras"], compile=False)
    logits = source.predict(keras_pixels * np.float32(SCALE) + np.float32(OFFSET), verbose=0)
    print(f"Keras import, 256 random images: max |served - softmax(Keras)| "
          f"{np.abs(keras_served - _softmax(logits)).max():.2e}")  # fmt: skip
    print(f"(everything is in {work})")


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    result: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return result


if __name__ == "__main__":
    main()
