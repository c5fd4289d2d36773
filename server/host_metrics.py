"""What the process serving /metrics reports of its host and itself: the standard process_* series, the memory a load
may still use (auxnet_memory_available_bytes), and Triton's CPU metrics.

Triton's (its docs/user_guide/metrics.md, "CPU Metrics"), so that its Grafana boards' host panels read this server
too: nv_cpu_utilization, nv_cpu_memory_total_bytes, nv_cpu_memory_used_bytes, unlabelled gauges.

As Triton computes them (triton-inference-server/core src/metrics.cc, PollCpuMetrics): from /proc/meminfo, total is
MemTotal and used is MemTotal - MemAvailable, system-wide (not the container's: server/load_memory.py reads the
cgroup's limit for its own decisions); from /proc/stat's aggregate line, utilization is the share of busy jiffies
(user, nice, system, irq, softirq, steal) among busy and idle ones (idle, iowait) since the previous reading.
One difference: Triton reads every half --metrics-interval-ms (1 s) on a thread of its own; here /proc is read when
/metrics is scraped, and utilization covers the time since the previous reading if that is at least MIN_WINDOW_S
old (otherwise the last figure stands: two scrapers a moment apart would measure nothing). Served by the process
that serves /metrics: the server, or under --workers the supervisor, once for the host and not summed per worker.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily

from server.load_memory import available, meminfo

MIN_WINDOW_S = 1.0  # Triton's default poll period (half its 2,000 ms --metrics-interval-ms)
BUSY = ("user", "nice", "system", "irq", "softirq", "steal")
IDLE = ("idle", "iowait")
FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")  # /proc/stat's order


class HostMetrics:
    """A prometheus_client collector: register it on the registry /metrics serves."""

    def __init__(self, proc: Path = Path("/proc"), clock=time.monotonic):
        self.proc, self.clock = proc, clock
        self._lock = threading.Lock()  # /metrics answers on several threads
        self._last = self._cpu_times()
        self._last_at = clock()
        self._utilization = 0.0

    def readable(self) -> bool:
        """Whether this host has the /proc files the figures come from (Linux)."""
        return self._last is not None and self._memory() is not None

    def collect(self):
        with self._lock:
            now, times = self.clock(), self._cpu_times()
            if times is not None and self._last is not None and now - self._last_at >= MIN_WINDOW_S:
                self._utilization = utilization(self._last, times)
                self._last, self._last_at = times, now
            elif times is not None and self._last is None:
                self._last, self._last_at = times, now
            figure = self._utilization
        memory = self._memory()
        if times is not None:
            yield GaugeMetricFamily("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", value=figure)
        if memory is not None:
            total, used = memory
            yield GaugeMetricFamily("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", value=total)
            yield GaugeMetricFamily("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", value=used)

    def _cpu_times(self) -> dict[str, int] | None:
        try:
            first = (self.proc / "stat").read_text().splitlines()[0].split()
            if first[0] != "cpu":
                return None
            return dict(zip(FIELDS, (int(v) for v in first[1:1 + len(FIELDS)])))
        except (OSError, IndexError, ValueError):
            return None

    def _memory(self) -> tuple[int, int] | None:
        """(MemTotal, MemTotal - MemAvailable) in bytes."""
        values = meminfo(self.proc / "meminfo")
        total, free = values.get("MemTotal"), values.get("MemAvailable")
        return None if total is None or free is None or free > total else (total, total - free)


def register_process_metrics(registry, cpu: bool = True, gpu: bool = True) -> None:
    """What the process that serves /metrics adds besides the request metrics: the standard process_* series
    (prometheus_client's: resident memory, CPU seconds, open files), the memory a load may still use, with `cpu`
    Triton's CPU metrics and with `gpu` its GPU metrics (server/gpu_metrics.py, where the host has a GPU driver)."""
    from prometheus_client import ProcessCollector

    from server.gpu_metrics import register_gpu_metrics

    ProcessCollector(registry=registry)
    registry.register(AvailableMemory())
    if cpu:
        register_host_metrics(registry)
    if gpu:
        register_gpu_metrics(registry)


class AvailableMemory:
    """auxnet_memory_available_bytes: the memory the server may still use as its load check reads it (the smallest
    of the host's MemAvailable and every limited memory cgroup's headroom: server/load_memory.py), so that an alert
    can see a refusal coming: available less --load-memory-floor-mb under a model's
    auxnet_model_memory_estimate_bytes means its next load (a new version, an upload) would be refused."""

    def collect(self):
        room = available()
        if room is not None:
            yield GaugeMetricFamily("auxnet_memory_available_bytes", "Memory the server may still use (the smaller of the "
                                    "host's MemAvailable and its memory cgroups' limit less working set)", value=room.bytes)


def register_host_metrics(registry, proc: Path = Path("/proc")) -> bool:
    """Put the host's figures on `registry` where this host has them (Linux); say once where it has not."""
    import logging

    metrics = HostMetrics(proc)
    if not metrics.readable():
        logging.getLogger("auxnet.server").warning("CPU metrics off: %s has no readable stat and meminfo", proc)
        return False
    registry.register(metrics)
    return True


def utilization(old: dict[str, int], new: dict[str, int]) -> float:
    """Busy share of the jiffies between two /proc/stat readings; a counter that went back counts 0 (as Triton's
    wrap_sub); no jiffies at all, 0."""
    grew = {k: max(new.get(k, 0) - old.get(k, 0), 0) for k in FIELDS}
    busy, idle = sum(grew[k] for k in BUSY), sum(grew[k] for k in IDLE)
    return busy / (busy + idle) if busy + idle else 0.0
