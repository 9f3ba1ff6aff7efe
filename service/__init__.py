"""The convserve gRPC model server (arrives with the next issue)."""

__all__: list[str] = []
