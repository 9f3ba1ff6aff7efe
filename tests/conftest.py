"""Shared fixtures: the real dataset's location and tiny models trained on slices of it."""

from __future__ import annotations

import os

# Quiet TensorFlow's C++ start-up logs in every test process (set before any import of TF).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
