"""The convserve gRPC model server: `convserve serve` or `python -m service`."""

__all__ = ["errors", "grpc", "images", "main", "metrics", "model", "repository", "settings"]
