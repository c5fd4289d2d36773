"""The early-exit gRPC server. Imports neither torch nor training (DESIGN.md): numpy, onnxruntime (or
TensorRT), grpcio and prometheus-client are all a serving machine installs."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("auxnet-serving")
except _metadata.PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "unknown"
