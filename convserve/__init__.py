"""convserve's neutral core: the wire API and its codec, the artifact format, the command.

client/, service/ and training/ stand on it and never import each other; it imports none of
them and needs neither TensorFlow nor a server.
"""

__all__ = ["api", "artifact", "cli", "fashion_mnist", "imagefiles", "pictures"]
