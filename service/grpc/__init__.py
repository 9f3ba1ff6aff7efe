"""The gRPC door and the server: its lifecycle, one thin servicer per API (v1: convserve.v1,
v2: the Open Inference Protocol) over the protocol-neutral engine, and token auth."""

__all__ = ["auth", "engine", "server", "v1", "v2"]
