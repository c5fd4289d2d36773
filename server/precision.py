"""What a model's numeric precision asks of the machine that serves it (int8 models: `python -m export --int8`)."""

from __future__ import annotations

from pathlib import Path

from server.repository import ModelInfo

INT8_DOT_PRODUCT_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8", "avx_vnni_int8"}


def cpu_int8_instructions() -> list[str]:
    """The int8 dot-product instruction sets this CPU reports (empty: none, or not an x86 Linux host)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(set(line.split(":", 1)[1].split()) & INT8_DOT_PRODUCT_FLAGS)
    except OSError:
        pass
    return []


def precision_warnings(info: ModelInfo, device_type: str, cpu_instructions: list[str] | None = None) -> list[str]:
    """Why this machine may serve an int8 model slower or less accurately than its export measured (empty for
    a float model, or when nothing differs)."""
    if info.precision != "int8":
        return []
    if device_type != "cpu":
        # ONNX Runtime's CUDA provider runs a QDQ graph's convolutions in float between quantize/dequantize
        # pairs: slower than the float model, for int8's accuracy.
        return [f"model {info.name} is int8 (exported with --int8, for CPUs) but runs on {device_type}: export it "
                "without --int8 for a GPU"]
    quantization = info.manifest["quantization"]
    measured = quantization.get("measured_on", {}).get("cpu_int8_instructions", [])
    here = cpu_int8_instructions() if cpu_instructions is None else cpu_instructions
    # 7-bit weights (export --int8's default since 2026-12-01) never saturate the 16-bit sums: the same answers
    # without VNNI. Older manifests say nothing: full range.
    if measured and not here and not quantization.get("reduce_range", False):
        # Without VNNI, uint8 x int8 products are summed in 16 bits that can saturate (ONNX Runtime's
        # quantization documentation): the accuracy its export measured may not hold here.
        return [f"model {info.name} is int8 and its accuracy was measured on a CPU with {', '.join(measured)}; this "
                "CPU has no int8 dot-product instructions, so its answers may differ: check them here (python -m "
                "bench.int8_cpu), serve the float model, or re-export with --int8 and without --int8-full-range"]
    return []
