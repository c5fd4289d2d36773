"""Free memory on the GPU that the server's CUDA sessions run on, for the load check (server/load_memory.py) under
--device cuda, tensorrt-ep or the TensorRT backend, where a load's weights and activations live in device memory.

The device is CUDA device 0 of those visible (CUDA_VISIBLE_DEVICES): ONNX Runtime's CUDA provider's default, which
the server does not change. The figure is the CUDA runtime's cudaMemGetInfo, read through the very libcudart that
the provider loaded into this process (dlopen with RTLD_NOLOAD: no second runtime and no new context; the call uses
the device's primary context, which the provider's sessions already hold). It is device-wide: what other processes
(the other --workers, another server) hold is not free. Before the process's first CUDA session no runtime is
loaded, so nothing is read and the load is not checked against the GPU (start-up loads are never checked).

UNVERIFIED on a GPU: the development machine has none. bench/gpu/serving_check.py reads it beside nvidia-smi and
measures a load against the estimate on the next GPU lease (issue 14).
"""

from __future__ import annotations

import ctypes
import os

# The CUDA major versions onnxruntime-gpu has been built against (1.31: CUDA 13; earlier: 12).
RUNTIMES = ("libcudart.so.13", "libcudart.so.12")
DEVICE = 0


def loaded_runtime(libraries: tuple[str, ...] = RUNTIMES):
    """The CUDA runtime library already in this process (matched by its soname, wherever it was loaded from), or
    None: RTLD_NOLOAD makes dlopen fail rather than load one."""
    for name in libraries:
        try:
            return ctypes.CDLL(name, mode=os.RTLD_NOLOAD | os.RTLD_LOCAL)
        except OSError:
            continue
    return None


def cuda_free(runtime=None, device: int = DEVICE) -> tuple[int, int] | None:
    """(free, total) bytes of the CUDA device, or None where no CUDA runtime is loaded or the runtime reports an
    error (its error code is not a figure)."""
    runtime = runtime if runtime is not None else loaded_runtime()
    if runtime is None:
        return None
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    try:
        # cudaSetDevice on this thread only: the provider sets its own device on the threads that run sessions.
        if runtime.cudaSetDevice(device) != 0 or runtime.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)) != 0:
            return None
    except (AttributeError, OSError):  # a runtime without these symbols: no figure rather than a failed load
        return None
    return free.value, total.value
