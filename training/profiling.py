"""`--profile-steps N`: where a training step's time goes, from N real steps of the run's first epoch.

Why (issue 10): one AuxNet-56-5 run trained at 18,079 img/s on an H200 (7 ms a step of 128 images) where the
issue asks for 30,000, and two runs side by side reached only 22,115 in all. Whether a step is bound by the
device (kernels back to back, so only fewer or faster kernels help) or by the host (gaps between kernels, so
CUDA graphs, fusion or a second run fill them) decides what to change; device minutes are too scarce to find
out by trial. The report answers it: wall time per step against the time some kernel ran (the union of kernel
intervals), and the operators that take the device's time.

The steps profiled are ordinary training steps (same batches, same updates), taken after the warm-up batches
so that compiling and CUDA-graph capture are not in them. Written to OUT/profile_epochN.txt. On a GPU lease,
bench/gpu/paper_runs.sh runs it in a short process of its own beside the real runs, which it then cannot harm.
UNVERIFIED on a GPU: the CUDA branch (kernel intervals from the profiler's device events) has run only on a
CPU's code path; on a CPU the report gives host operator times and no device figures.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

TOP_OPERATORS = 25


class StepProfiler:
    """Called after every training step of one epoch (train_one_epoch's `on_step`): profiles steps
    first .. first + steps - 1 (1-based) and writes the report when the last of them is done."""

    def __init__(self, first: int, steps: int, batch_size: int, device: torch.device, path: Path):
        if first < 1 or steps < 1:
            raise ValueError(f"profile window: first step {first} and step count {steps} must both be >= 1")
        self.first, self.steps, self.batch_size, self.device, self.path = first, steps, batch_size, device, path
        self._prof: profile | None = None
        self._start = 0.0
        self.report: str | None = None

    def __call__(self, done: int) -> None:
        if done == self.first - 1:
            self._begin()
        elif done == self.first - 1 + self.steps and self._prof is not None:
            self._end()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _begin(self) -> None:
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        self._sync()  # nothing queued from before the window
        self._prof = profile(activities=activities)
        self._prof.__enter__()
        self._start = time.perf_counter()

    def _end(self) -> None:
        self._sync()  # the window's kernels finished
        wall = time.perf_counter() - self._start
        self._prof.__exit__(None, None, None)
        self.report = format_report(self._prof, wall, self.steps, self.batch_size, self.first, self.device.type)
        self.path.write_text(self.report)
        self._prof = None


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals (same unit as given): time in which at least one ran."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def format_report(prof: profile, wall_s: float, steps: int, batch_size: int, first: int, device_type: str) -> str:
    per_step_ms = 1000 * wall_s / steps
    lines = [f"profiled training steps {first}..{first + steps - 1} of the first epoch ({steps} steps of {batch_size} "
             f"images) on {device_type}",
             f"wall per step: {per_step_ms:.3f} ms ({steps * batch_size / wall_s:.0f} img/s under the profiler)"]
    if device_type == "cuda":
        kernels = [(e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA]
        busy_ms = busy_seconds(kernels) / 1000 / steps  # profiler times are microseconds
        lines.append(f"device busy per step: {busy_ms:.3f} ms ({100 * busy_ms / per_step_ms:.0f}% of the wall; "
                     f"{len(kernels) / steps:.0f} kernels a step); the rest is the device waiting for the host "
                     f"or for another process's kernels")
        sort = "self_device_time_total"
    else:
        sort = "self_cpu_time_total"
    lines.append(prof.key_averages().table(sort_by=sort, row_limit=TOP_OPERATORS))
    return "\n".join(lines) + "\n"
