"""The gRPC transport: server lifecycle, thin servicers, and the one error/metrics boundary."""

__all__ = ["boundary", "server", "servicer"]
