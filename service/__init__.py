"""The convserve model server (gRPC and HTTP): `convserve serve` or `python -m service`."""

__all__ = [
    "boundary",
    "calls",
    "cpus",
    "errors",
    "grpc",
    "http",
    "images",
    "layouts",
    "main",
    "metrics",
    "model",
    "policies",
    "repository",
    "settings",
    "tokens",
    "workers",
]
