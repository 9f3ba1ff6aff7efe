"""Train Keras Conv2D classifiers on Fashion-MNIST or a folder of images, import classifiers
trained elsewhere (ONNX, Keras), and publish versioned model artifacts."""

import os

# TensorFlow's C++ start-up chatter (CPU features, missing CUDA) hides the training output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__all__ = [
    "commands",
    "data",
    "errors",
    "export",
    "importer",
    "layers",
    "model",
    "onnx_import",
    "plan",
    "publish",
    "reference",
    "report",
    "tf2onnx_ops",
    "train",
]
