"""Execution backends behind one small interface: `run(batch) -> [features, logits]` or `[logits]`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np


class Backend(Protocol):
    name: str  # e.g. "onnxruntime:CPUExecutionProvider", the provider that actually runs

    def run(self, x: np.ndarray) -> list[np.ndarray]: ...


PROVIDER_PREFERENCE = {
    "auto": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt-ep": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


_cuda_libraries_loaded = False


def load_cuda_libraries(ort) -> None:
    """Once per process, before a CUDA provider's first session: ONNX Runtime's own `preload_dlls` loads the
    CUDA and cuDNN libraries from NVIDIA's pip packages (where PyTorch's CUDA wheels put them), so the server
    finds them without LD_LIBRARY_PATH. Without those packages, the system's loader paths apply as before."""
    global _cuda_libraries_loaded
    if _cuda_libraries_loaded or not hasattr(ort, "preload_dlls"):
        return
    _cuda_libraries_loaded = True
    try:
        ort.preload_dlls()
    except Exception as e:  # noqa: BLE001 - best effort: the session's own loading says what is missing
        logging.getLogger("auxnet.server").info("onnxruntime.preload_dlls: %s: %s", type(e).__name__, e)


class OnnxRuntimeBackend:
    """One ONNX Runtime session per segment. With onnxruntime-gpu the CUDA (or TensorRT) execution
    provider is asked for; ORT silently falls back to CPU when it cannot start it, so the provider that
    actually runs is read back from the session and reported (GetModelInfo, logs)."""

    def __init__(self, path: Path, device: str = "cpu", intra_op_threads: int = 1, tf32: bool | None = None,
                 cpu_mem_arena: bool = True):
        """`tf32`: on the CUDA provider, allow TensorFloat-32 convolutions (ONNX Runtime's default, faster, ~1e-3
        relative rounding per product) or not (True/False); None leaves ONNX Runtime's default. `cpu_mem_arena`:
        ONNX Runtime's CPU arena, which keeps each session's largest batch's activations allocated between runs
        (faster); without it they are allocated per run and freed (--cpu-mem-arena false; RESULTS §63)."""
        import onnxruntime as ort

        if device not in PROVIDER_PREFERENCE:
            raise ValueError(f"device {device!r} unknown; valid: {', '.join(PROVIDER_PREFERENCE)}")
        available = set(ort.get_available_providers())
        wanted = [p for p in PROVIDER_PREFERENCE[device] if p in available]
        if device in ("cuda", "tensorrt-ep") and wanted[0] == "CPUExecutionProvider":
            raise RuntimeError(f"--device {device} needs onnxruntime-gpu; this onnxruntime offers {sorted(available)}")
        opts = ort.SessionOptions()
        # The server runs several segments at once on a thread pool sized to the cores; one intra-op
        # thread per session keeps the total at the core count (no oversubscription).
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_cpu_mem_arena = cpu_mem_arena
        first = wanted[0]
        if "CUDAExecutionProvider" in wanted:
            load_cuda_libraries(ort)
        if tf32 is not None:
            wanted = [(p, {"use_tf32": str(int(tf32))}) if p == "CUDAExecutionProvider" else p for p in wanted]
        self.session = ort.InferenceSession(str(path), opts, providers=wanted)
        running = self.session.get_providers()[0]
        if device in ("cuda", "tensorrt-ep") and running == "CPUExecutionProvider":
            # ORT lists the CUDA provider whenever onnxruntime-gpu is installed, then silently runs on the CPU
            # when the CUDA libraries or the GPU cannot be loaded (issue 14): refuse rather than serve slowly.
            raise RuntimeError(f"--device {device}: ONNX Runtime could not start {first} for {path.name} and fell "
                               "back to the CPU (CUDA 13 runtime libraries, cuDNN or a GPU missing? ONNX Runtime's "
                               "log above names the library); refusing to serve on the CPU")
        self.name = f"onnxruntime:{running}"
        self.outputs = [o.name for o in self.session.get_outputs()]
        gpu = self.session.get_providers()[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        self.device_type = "cuda" if gpu else "cpu"

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {"input": x})

    def run_bound(self, x):
        """Run with IOBinding: `x` is a host array or the features OrtValue of the previous segment; returns
        [features OrtValue, logits array] (or [logits array] for the final segment). The features stay where the
        provider computed them (device memory under CUDA), so a chain of segments never copies them to the
        host and back; only the small logits come to the host, where the exit rule needs them."""
        import onnxruntime as ort

        io = self.session.io_binding()
        if isinstance(x, ort.OrtValue):
            io.bind_ortvalue_input("input", x)
        else:
            io.bind_cpu_input("input", np.ascontiguousarray(x, dtype=np.float32))
        for name in self.outputs:
            io.bind_output(name, self.device_type if name == "features" else "cpu")
        self.session.run_with_iobinding(io)
        values = io.get_outputs()
        return [v if name == "features" else v.numpy() for name, v in zip(self.outputs, values)]


def to_host(features) -> np.ndarray:
    """Features as a host array, whether a backend returned an array or an OrtValue (device-resident)."""
    return features if isinstance(features, np.ndarray) else features.numpy()


class TensorRTBackend:
    """A serialized TensorRT engine (`exit_<k>.plan`). UNVERIFIED: written against the TensorRT 10 Python
    API (named I/O tensors, execute_async_v3) and cuda-python; no machine available to this project has
    TensorRT, so this path has never run. The server refuses it unless asked for (--backend tensorrt)."""

    def __init__(self, plan: Path):
        try:
            import tensorrt as trt
            from cuda.bindings import runtime as cudart
        except ImportError as e:
            raise RuntimeError(f"--backend tensorrt needs the tensorrt and cuda-python packages ({e})") from e
        self.trt, self.cudart = trt, cudart
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{plan}: TensorRT could not deserialize the engine (built by another version?)")
        self.context = self.engine.create_execution_context()
        self.outputs = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)
                        if self.engine.get_tensor_mode(self.engine.get_tensor_name(i)) == trt.TensorIOMode.OUTPUT]
        _, self.stream = cudart.cudaStreamCreate()
        self.name = "tensorrt"

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        cudart = self.cudart
        x = np.ascontiguousarray(x, dtype=np.float32)
        self.context.set_input_shape("input", x.shape)
        buffers, results = [], []
        _, d_in = cudart.cudaMalloc(x.nbytes)
        buffers.append(d_in)
        cudart.cudaMemcpyAsync(d_in, x.ctypes.data, x.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream)
        self.context.set_tensor_address("input", d_in)
        for name in self.outputs:
            out = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=np.float32)
            _, d_out = cudart.cudaMalloc(out.nbytes)
            buffers.append(d_out)
            self.context.set_tensor_address(name, d_out)
            results.append((out, d_out))
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execution failed")
        for out, d_out in results:
            cudart.cudaMemcpyAsync(out.ctypes.data, d_out, out.nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream)
        cudart.cudaStreamSynchronize(self.stream)
        for b in buffers:
            cudart.cudaFree(b)
        return [out for out, _ in results]


def make_backend(kind: str, onnx: Path, plan: Path | None, device: str, intra_op_threads: int,
                 cpu_mem_arena: bool = True) -> Backend:
    if kind == "onnxruntime":
        return OnnxRuntimeBackend(onnx, device, intra_op_threads, cpu_mem_arena=cpu_mem_arena)
    if kind == "tensorrt":
        if plan is None:
            raise RuntimeError(f"--backend tensorrt: {onnx.parent} has no TensorRT plan (export with --trt)")
        return TensorRTBackend(plan)
    raise ValueError(f"backend {kind!r} unknown; valid: onnxruntime, tensorrt")


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
