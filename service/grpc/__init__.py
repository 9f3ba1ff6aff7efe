"""The gRPC transport: server lifecycle, one thin servicer per API (v1: convserve.v1, v2: the
Open Inference Protocol) over the protocol-neutral engine, token auth, and the one
error/metrics boundary."""

__all__ = ["auth", "boundary", "engine", "server", "v1", "v2"]
