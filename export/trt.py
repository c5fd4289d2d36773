"""TensorRT engine per exit from its ONNX. UNVERIFIED: TensorRT is installed neither on the development
machine nor on the GPU machine this project could borrow; this code has never run (README says so)."""

from __future__ import annotations

from pathlib import Path


class TensorRTUnavailable(RuntimeError):
    pass


def require_tensorrt():
    """Return the tensorrt module, or say exactly what is missing."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable("--trt needs the 'tensorrt' Python package (pip install tensorrt), "
                                  f"which is not installed ({e})") from e
    try:
        import ctypes

        ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        raise TensorRTUnavailable(f"--trt needs an NVIDIA GPU driver (libcuda.so.1 not found: {e})") from e
    return trt


def gpu_name() -> str:
    try:
        import subprocess

        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=10).stdout.strip().splitlines()[0]
    except (OSError, IndexError, Exception):  # noqa: BLE001 - a label only
        return "unknown GPU"


def build_engine(onnx_path: Path, plan_path: Path, input_shape: list[int], max_batch: int, fp16: bool,
                 timing_cache: Path) -> dict:
    """Parse the ONNX, add an optimisation profile for batch 1..max_batch, build and serialise the plan."""
    trt = require_tensorrt()
    major = int(trt.__version__.split(".")[0])
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if fp16:
        if major >= 11:
            raise TensorRTUnavailable(f"TensorRT {trt.__version__} removed the FP16 builder flag and wants "
                                      "precision in the ONNX (strong typing); export without --fp16")
        config.set_flag(trt.BuilderFlag.FP16)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    shape = tuple(input_shape)
    profile.set_shape("input", (1, *shape), (max(1, max_batch // 2), *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path}")
    plan_path.write_bytes(bytes(engine))
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"tensorrt_version": trt.__version__, "fp16": fp16, "max_batch": max_batch}
