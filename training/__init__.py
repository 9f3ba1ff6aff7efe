"""Train Keras Conv2D classifiers on Fashion-MNIST and publish versioned model artifacts."""

import os

# TensorFlow's C++ start-up chatter (CPU features, missing CUDA) hides the training output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__all__ = ["commands", "export", "model", "plan", "reference", "report", "train"]
