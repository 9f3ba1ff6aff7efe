"""convserve's Python client: the `convserve` command now; the gRPC client library next.

Depends only on grpcio, protobuf and numpy; it never imports TensorFlow.
"""

__all__: list[str] = []
