"""ONNX Runtime CPU latency per segment, measured at export time and labelled with the machine."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np


def machine_label() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}"


def segment_latency_ms(path: Path, input_shape: list[int], batch: int, repeats: int = 20) -> float:
    """Median wall time of one run at `batch` (after warm-up), intra-op threads 1 as the server uses."""
    from export.segments import onnx_session

    sess = onnx_session(path)
    x = np.random.default_rng(0).standard_normal((batch, *input_shape)).astype(np.float32)
    for _ in range(3):
        sess.run(None, {"input": x})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {"input": x})
        times.append(time.perf_counter() - t)
    return round(1000 * statistics.median(times), 4)
