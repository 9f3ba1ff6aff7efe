"""The convserve gRPC model server: `convserve serve` or `python -m service`."""

import os

# TensorFlow's C++ start-up chatter (CPU features, missing CUDA) hides the server's own log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__all__ = ["errors", "grpc", "images", "main", "metrics", "model", "repository", "settings"]
