"""The HTTP door: the Open Inference Protocol's REST API (`rest`) and every unary gRPC method
as JSON or protobuf over HTTP (`connect`), through the same boundary (`door`); and the
explorer page (`explorer`), a client of both."""

__all__ = ["announce", "connect", "door", "explorer", "rest"]
