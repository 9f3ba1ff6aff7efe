"""The convserve gRPC model server: `convserve serve` or `python -m service`."""

__all__ = [
    "calls",
    "cpus",
    "errors",
    "grpc",
    "images",
    "main",
    "metrics",
    "model",
    "policies",
    "repository",
    "settings",
    "tokens",
]
