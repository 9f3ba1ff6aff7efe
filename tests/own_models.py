"""Examples of the user's own data and models, for the tests and bench/own_models.py: an image
folder written from Fashion-MNIST, an ONNX classifier as PyTorch exports them, a Keras
functional model with a skip connection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from convserve import fashion_mnist

EASY = ("Trouser", "Bag", "Sneaker")  # three classes that look nothing alike
SIDE = 32  # the folder's images are 32x32 RGB, resized from Fashion-MNIST's 28x28
ONNX_SHAPE = (3, 20, 24)  # C, H, W of the ONNX model's NCHW input
SCALE, OFFSET = 1 / 127.5, -1.0


def write_folder(root: Path, per_class: int) -> Path:
    """DIR/<class>/<i>.png: Fashion-MNIST training images, resized and given colour."""
    images = fashion_mnist.load("train", classes=EASY, limit=per_class * 4)
    for label, name in enumerate(EASY):
        (root / name).mkdir(parents=True)
        for index, image in enumerate(images.images[images.labels == label][:per_class]):
            rgb = np.stack([image, image // 2, 255 - image], axis=-1)
            resized = Image.fromarray(rgb).resize((SIDE, SIDE), Image.Resampling.BILINEAR)
            resized.save(root / name / f"{index}.png")
    return root


def onnx_classifier(path: Path) -> Path:
    """What a PyTorch export looks like: NCHW RGB input with a dynamic batch, Conv + Relu, a
    strided Conv without activation, global average pooling, Gemm → logits (no softmax)."""
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="features.0",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="features.1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="features.2", kernel_shape=[3, 3],
                         strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["c2"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w3", "b3"], ["logits"], transB=1),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *ONNX_SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(EASY)])],
        [weight("w1", 4, 3, 3, 3), weight("b1", 4), weight("w2", 6, 4, 3, 3),
         weight("w3", len(EASY), 6), weight("b3", len(EASY))],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="pytorch", producer_version="2.5.0")  # fmt: skip
    model.ir_version = 8
    onnx.save(model, path)
    return path


def keras_classifier(path: Path) -> Path:
    """A functional model with a skip connection, a conv followed by a ReLU layer, logits out."""
    import keras

    keras.utils.set_random_seed(0)
    x = keras.Input((24, 20, 3))
    stem = keras.layers.ReLU(name="stem_relu")(
        keras.layers.Conv2D(8, 3, padding="same", name="stem")(x)
    )
    block = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="block")(stem)
    added = keras.layers.Add(name="skip")([stem, block])
    down = keras.layers.Conv2D(12, 3, strides=2, activation="relu", name="down")(added)
    pooled = keras.layers.GlobalAveragePooling2D()(down)
    keras.Model(x, keras.layers.Dense(len(EASY), name="logits")(pooled)).save(path)
    return path
