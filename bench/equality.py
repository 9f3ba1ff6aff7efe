"""What the server answers against Keras, over the wire, on all 10,000 test images.

    .venv/bin/python bench/equality.py [--models-dir models] [--model fashion]

Starts `convserve serve` (default settings), sends the test set through Predict and the first
conv layer's FeatureMap (with pre-activations), and prints the largest differences from the
Keras model of the same version and from training/reference.py's convolution. Numbers, not a
test (the tests hold tiny models to 1e-5 the same way).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import start_convserve, stop

from client import Client
from convserve.fashion_mnist import load
from training.reference import conv2d

BATCH = 2000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--model", default="fashion")
    args = parser.parse_args()
    test = load("test")
    server, target, _, _ = start_convserve(args.models_dir, args.model)
    try:
        with Client(target) as client:
            predicted = [
                client.predict(test.images[i : i + BATCH])
                for i in range(0, len(test.images), BATCH)
            ]
            maps = [
                client.feature_map(test.images[i : i + 500], pre_activation=True)
                for i in range(0, len(test.images), 500)
            ]
    finally:
        stop(server)
    import keras

    version = predicted[0].version
    model = keras.models.load_model(
        args.models_dir / args.model / str(version) / "model.keras", compile=False
    )
    pixels = test.images[..., None] / np.float32(255)
    served = np.concatenate([result.probabilities for result in predicted])
    expected = model.predict(pixels, batch_size=1000, verbose=0)
    print(f"{args.model} version {version}, {len(served)} test images over the wire:")
    print(f"  Predict: max |served - Keras| {np.abs(served - expected).max():.2e}; accuracy "
          f"{(served.argmax(1) == test.labels).mean():.4f} served, "
          f"{(expected.argmax(1) == test.labels).mean():.4f} Keras")  # fmt: skip
    layer = maps[0].layer.name
    activations = np.concatenate([result.activations for result in maps])
    pre = np.concatenate([result.pre_activations for result in maps])
    keras_maps = keras.Model(model.input, model.get_layer(layer).output).predict(
        pixels, batch_size=1000, verbose=0
    )
    conv = model.get_layer(layer)
    reference = conv2d(pixels, *conv.get_weights(), strides=conv.strides, padding=conv.padding,
                       dilation=conv.dilation_rate)  # fmt: skip
    print(f"  FeatureMap {layer}: max |activations - Keras| "
          f"{np.abs(activations - keras_maps).max():.2e}, max |pre-activations - reference| "
          f"{np.abs(pre - reference).max():.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
