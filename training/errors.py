"""ExportError: a model that cannot be published, by training, import or export alike."""

from __future__ import annotations

__all__ = ["ExportError"]


class ExportError(RuntimeError):
    """A model that cannot be published: its shapes differ from the output-size formula, a
    served graph differs from Keras (the message names the graph and the output), or there
    is no version or model.keras to export from."""
