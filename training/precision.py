"""Device and precision choice: bf16 autocast + channels_last where the hardware has fast bf16."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


def tune_cuda_kernels(device: torch.device) -> None:
    """On CUDA, let cuDNN time its convolution algorithms once per shape and keep the fastest: a training run
    repeats the same few shapes millions of times, and the default heuristic choice is not the fastest for
    the 16-64-channel NHWC bf16 convolutions of a CIFAR ResNet. The first H200 lease ran without it (18,079
    img/s for one run, the issue asks 30,000; RESULTS §19); the next lease's runs measure it. The price:
    cuDNN may pick differently between runs, so a GPU run is not bit-reproducible (it was not before either:
    atomics in the backward)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: measured here, bf16 autocast + channels_last is ~2x fp32 (issue 2)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision {precision!r} unknown; valid: auto, fp32, bf16")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def autocast_factory(precision: str, device: torch.device):
    """A zero-argument context factory: bf16 autocast with fp32 master weights, or nothing."""
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext
