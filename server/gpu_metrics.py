"""Triton's GPU metrics on /metrics, so that what reads a Triton's GPUs reads this server's: its Grafana boards, Model
Analyzer in remote mode (it takes GPU memory and utilization from these series), GenAI-Perf's telemetry.

The series, per GPU and labelled `gpu_uuid` as Triton's (its docs/user_guide/metrics.md, "GPU Metrics", and the help
texts of its core src/metrics.cc): nv_gpu_utilization (0.0 - 1.0), nv_gpu_memory_total_bytes, nv_gpu_memory_used_bytes,
nv_gpu_power_usage and nv_gpu_power_limit (watts), nv_energy_consumption (joules since the server started: the
first reading is the zero). Every GPU the driver shows, as Triton lists every GPU DCGM shows, whether or not
CUDA_VISIBLE_DEVICES hides it from the sessions.

Triton reads them through DCGM on a thread every 2 s; here through NVML (libnvidia-ml.so.1, the driver's own library,
present wherever a GPU driver is: nothing to install), read when /metrics is scraped. A figure NVML cannot give for
a GPU (power on some boards) is left out for that GPU, where Triton writes 0 (and stops asking after three failures).
Like Triton's counters here (server/triton_metrics.py), nv_energy_consumption is a gauge that only grows.
Where no NVML library loads (a host without a GPU driver) there are no GPU series and one INFO line says why.
Served by the process that serves /metrics: the server, or under --workers the supervisor, once for the host.

UNVERIFIED on a GPU: the development machine has none; tests stand in for NVML with its C signatures, and
bench/gpu/serving_check.py prints what this collector reads on the next GPU lease (issue 14).
"""

from __future__ import annotations

import ctypes
import logging
import threading

from prometheus_client.core import GaugeMetricFamily

LIBRARY = "libnvidia-ml.so.1"
NVML_SUCCESS = 0
UUID_BUFFER = 96  # NVML_DEVICE_UUID_V2_BUFFER_SIZE
log = logging.getLogger("auxnet.server")
HELP = {  # Triton's help texts, word for word
    "nv_gpu_utilization": "GPU utilization rate [0.0 - 1.0)",
    "nv_gpu_memory_total_bytes": "GPU total memory, in bytes",
    "nv_gpu_memory_used_bytes": "GPU used memory, in bytes",
    "nv_gpu_power_usage": "GPU power usage in watts",
    "nv_gpu_power_limit": "GPU power management limit in watts",
    "nv_energy_consumption": "GPU energy consumption in joules since the Triton Server started",
}


class NvmlMemory(ctypes.Structure):  # nvmlMemory_t
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


class NvmlUtilization(ctypes.Structure):  # nvmlUtilization_t: percent over the driver's last sample period
    _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]


def load_nvml(name: str = LIBRARY):
    """The NVML library, initialised, or None where it cannot be loaded or initialised (no driver, no GPU)."""
    try:
        lib = ctypes.CDLL(name)
        return lib if lib.nvmlInit_v2() == NVML_SUCCESS else None
    except (OSError, AttributeError):
        return None


class GpuMetrics:
    """A prometheus_client collector of Triton's GPU series, read from `nvml` (load_nvml's library) at each scrape."""

    def __init__(self, nvml):
        self.nvml = nvml
        self._lock = threading.Lock()  # /metrics answers on several threads; the energy's zero is set once
        self._energy_start: dict[str, int] = {}
        self.devices = self._devices()

    def _devices(self) -> list[tuple[str, ctypes.c_void_p]]:
        count = ctypes.c_uint(0)
        if self.nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != NVML_SUCCESS:
            return []
        devices = []
        for index in range(count.value):
            handle, uuid = ctypes.c_void_p(), ctypes.create_string_buffer(UUID_BUFFER)
            if (self.nvml.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(index), ctypes.byref(handle)) == NVML_SUCCESS
                    and self.nvml.nvmlDeviceGetUUID(handle, uuid, ctypes.c_uint(UUID_BUFFER)) == NVML_SUCCESS):
                devices.append((uuid.value.decode("ascii", "replace"), handle))
        return devices

    def _read(self, function: str, handle, value):
        """`value` filled by NVML's `function`, or None where NVML returned an error (not supported, GPU lost) or
        has no such function (an older driver's library)."""
        try:
            call = getattr(self.nvml, function)
        except AttributeError:
            return None
        return value if call(handle, ctypes.byref(value)) == NVML_SUCCESS else None

    def collect(self):
        families = {name: GaugeMetricFamily(name, text, labels=["gpu_uuid"]) for name, text in HELP.items()}
        for uuid, handle in self.devices:
            labels = [uuid]
            use = self._read("nvmlDeviceGetUtilizationRates", handle, NvmlUtilization())
            if use is not None:
                families["nv_gpu_utilization"].add_metric(labels, use.gpu * 0.01)
            memory = self._read("nvmlDeviceGetMemoryInfo", handle, NvmlMemory())
            if memory is not None:
                families["nv_gpu_memory_total_bytes"].add_metric(labels, memory.total)
                families["nv_gpu_memory_used_bytes"].add_metric(labels, memory.used)
            for name, function in (("nv_gpu_power_usage", "nvmlDeviceGetPowerUsage"),
                                   ("nv_gpu_power_limit", "nvmlDeviceGetPowerManagementLimit")):
                milliwatts = self._read(function, handle, ctypes.c_uint())
                if milliwatts is not None:
                    families[name].add_metric(labels, milliwatts.value * 0.001)
            millijoules = self._read("nvmlDeviceGetTotalEnergyConsumption", handle, ctypes.c_ulonglong())
            if millijoules is not None:
                with self._lock:
                    start = self._energy_start.setdefault(uuid, millijoules.value)
                families["nv_energy_consumption"].add_metric(labels, max(millijoules.value - start, 0) * 0.001)
        yield from (f for f in families.values() if f.samples)


def register_gpu_metrics(registry, nvml=None) -> bool:
    """Put Triton's GPU series on `registry` where NVML shows a GPU; say once (INFO) where it does not."""
    nvml = nvml if nvml is not None else load_nvml()
    if nvml is None:
        log.info("GPU metrics off: %s could not be loaded or initialised (no GPU driver on this host)", LIBRARY)
        return False
    try:
        metrics = GpuMetrics(nvml)
    except (AttributeError, OSError, ValueError) as e:  # an NVML this code does not know: serve without them
        log.warning("GPU metrics off: NVML's devices could not be listed (%s: %s)", type(e).__name__, e)
        return False
    if not metrics.devices:
        log.info("GPU metrics off: NVML shows no GPU")
        return False
    log.info("GPU metrics for %s", ", ".join(uuid for uuid, _ in metrics.devices))
    registry.register(metrics)
    # Energy counts from now, as Triton's from its start: the first reading sets each GPU's zero.
    list(metrics.collect())
    return True
