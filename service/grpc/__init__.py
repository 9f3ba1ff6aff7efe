"""The gRPC transport: server lifecycle, thin servicers, and the one error/metrics interceptor."""

__all__ = ["interceptors", "server", "servicer"]
