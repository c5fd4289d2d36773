"""The early-exit gRPC server. Imports neither torch nor training (DESIGN.md): numpy, onnxruntime (or
TensorRT), grpcio and prometheus-client are all a serving machine installs."""
