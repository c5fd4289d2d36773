"""Checkpoint -> model repository: one ONNX (and optionally TensorRT) engine per exit, calibrated."""
