"""Triton's GPU series (server/gpu_metrics.py) from a stand-in for NVML with its C signatures (no GPU here): Triton's
names, help texts, `gpu_uuid` labels and units; energy from the server's start; a figure NVML refuses left out for
that GPU only; no driver, no series and the server serves on; Triton's switch turns them off."""

import ctypes
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from server import gpu_metrics
from server.gpu_metrics import GpuMetrics, NvmlMemory, NvmlUtilization, register_gpu_metrics
from tests.server.conftest import running_server

NVML_ERROR_NOT_SUPPORTED = 3


class FakeNvml:
    """NVML's functions as the driver's library exports them: an int status, results written through the pointers
    passed. `gpus`: per GPU, its uuid and figures in NVML's units (percent, bytes, milliwatts, millijoules)."""

    def __init__(self, gpus: list[dict]):
        self.gpus = gpus

    @staticmethod
    def _put(pointer, ctype, value):
        ctypes.cast(pointer, ctypes.POINTER(ctype))[0] = value

    def _gpu(self, handle):
        return self.gpus[handle.value - 1]  # handles are 1-based here: a null handle would be no device

    def nvmlDeviceGetCount_v2(self, count):  # noqa: N802 - NVML's names
        self._put(count, ctypes.c_uint, len(self.gpus))
        return 0

    def nvmlDeviceGetHandleByIndex_v2(self, index, handle):  # noqa: N802
        self._put(handle, ctypes.c_void_p, index.value + 1)
        return 0

    def nvmlDeviceGetUUID(self, handle, buffer, length):  # noqa: N802
        buffer.value = self._gpu(handle)["uuid"].encode()
        return 0

    def _figure(self, handle, pointer, ctype, key):
        value = self._gpu(handle).get(key)
        if value is None:
            return NVML_ERROR_NOT_SUPPORTED
        self._put(pointer, ctype, value)
        return 0

    def nvmlDeviceGetUtilizationRates(self, handle, out):  # noqa: N802
        return self._figure(handle, out, NvmlUtilization, "util")

    def nvmlDeviceGetMemoryInfo(self, handle, out):  # noqa: N802
        return self._figure(handle, out, NvmlMemory, "memory")

    def nvmlDeviceGetPowerUsage(self, handle, out):  # noqa: N802
        return self._figure(handle, out, ctypes.c_uint, "power_mw")

    def nvmlDeviceGetPowerManagementLimit(self, handle, out):  # noqa: N802
        return self._figure(handle, out, ctypes.c_uint, "limit_mw")

    def nvmlDeviceGetTotalEnergyConsumption(self, handle, out):  # noqa: N802
        return self._figure(handle, out, ctypes.c_ulonglong, "energy_mj")


def h200(uuid: str, **changes) -> dict:
    gpu = {"uuid": uuid, "util": NvmlUtilization(37, 12), "memory": NvmlMemory(150_000_000_000, 140_000_000_000, 10_000_000_000),
           "power_mw": 123_456, "limit_mw": 700_000, "energy_mj": 5_000_000}
    return {**gpu, **changes}


def text(registry) -> str:
    return generate_latest(registry).decode()


def test_tritons_series_names_labels_and_units():
    nvml = FakeNvml([h200("GPU-aaaa"), h200("GPU-bbbb", util=NvmlUtilization(100, 0))])
    registry = CollectorRegistry()
    assert register_gpu_metrics(registry, nvml)
    nvml.gpus[0]["energy_mj"] += 2_500  # 2.5 J since the server started
    got = text(registry)
    for line in ('# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)',
                 '# TYPE nv_gpu_utilization gauge',
                 'nv_gpu_utilization{gpu_uuid="GPU-aaaa"} 0.37',
                 'nv_gpu_utilization{gpu_uuid="GPU-bbbb"} 1.0',
                 '# HELP nv_gpu_memory_total_bytes GPU total memory, in bytes',
                 'nv_gpu_memory_total_bytes{gpu_uuid="GPU-aaaa"} 1.5e+11',
                 '# HELP nv_gpu_memory_used_bytes GPU used memory, in bytes',
                 'nv_gpu_memory_used_bytes{gpu_uuid="GPU-aaaa"} 1e+10',
                 '# HELP nv_gpu_power_usage GPU power usage in watts',
                 'nv_gpu_power_usage{gpu_uuid="GPU-aaaa"} 123.456',
                 '# HELP nv_gpu_power_limit GPU power management limit in watts',
                 'nv_gpu_power_limit{gpu_uuid="GPU-bbbb"} 700.0',
                 '# HELP nv_energy_consumption GPU energy consumption in joules since the Triton Server started',
                 'nv_energy_consumption{gpu_uuid="GPU-aaaa"} 2.5',
                 'nv_energy_consumption{gpu_uuid="GPU-bbbb"} 0.0'):
        assert line in got.splitlines(), line


def test_a_figure_nvml_refuses_is_left_out_for_that_gpu_only():
    nvml = FakeNvml([h200("GPU-aaaa", power_mw=None, energy_mj=None), h200("GPU-bbbb")])
    registry = CollectorRegistry()
    register_gpu_metrics(registry, nvml)
    got = text(registry)
    assert 'nv_gpu_power_usage{gpu_uuid="GPU-aaaa"}' not in got and 'nv_gpu_power_usage{gpu_uuid="GPU-bbbb"} 123.456' in got
    assert 'nv_energy_consumption{gpu_uuid="GPU-aaaa"}' not in got
    assert 'nv_gpu_memory_used_bytes{gpu_uuid="GPU-aaaa"} 1e+10' in got  # the rest of that GPU stands
    nvml.gpus[0]["energy_mj"] = 9_000_000  # energy readable later: its zero is its first reading
    nvml.gpus[0]["energy_mj"] += 1_000
    assert 'nv_energy_consumption{gpu_uuid="GPU-aaaa"} 0.0' in text(registry)


def test_no_gpu_no_series(caplog):
    caplog.set_level("INFO")
    registry = CollectorRegistry()
    assert not register_gpu_metrics(registry, FakeNvml([]))
    assert "GPU metrics off: NVML shows no GPU" in caplog.text and "nv_gpu" not in text(registry)
    assert gpu_metrics.load_nvml("libno-such-nvml.so.1") is None
    assert not GpuMetrics(FakeNvml([])).devices


@pytest.mark.parametrize("allow", [True, False])
def test_the_server_serves_them_unless_told_not_to(tiny_repo, monkeypatch, allow):
    monkeypatch.setattr(gpu_metrics, "load_nvml", lambda name=gpu_metrics.LIBRARY: FakeNvml([h200("GPU-cccc")]))
    with running_server(tiny_repo, gpu_metrics=allow) as (app, _):
        body = urllib.request.urlopen(f"http://127.0.0.1:{app.metrics_port}/metrics", timeout=10).read().decode()
    assert ('nv_gpu_power_limit{gpu_uuid="GPU-cccc"} 700.0' in body) == allow
    assert "nv_inference_count" in body  # the rest of /metrics either way


def test_triton_spells_the_switch():
    from server.__main__ import parse_args, server_config

    assert server_config(parse_args(["--repo", "r"])).gpu_metrics
    assert not server_config(parse_args(["--repo", "r", "--allow-gpu-metrics=false"])).gpu_metrics


def test_an_nvml_without_a_function_leaves_out_that_series_only(caplog):
    class OlderNvml(FakeNvml):  # a driver's library that predates the energy counter
        nvmlDeviceGetTotalEnergyConsumption = property(lambda self: (_ for _ in ()).throw(AttributeError("undefined symbol")))

    registry = CollectorRegistry()
    assert register_gpu_metrics(registry, OlderNvml([h200("GPU-eeee")]))
    got = text(registry)
    assert "nv_energy_consumption" not in got and 'nv_gpu_power_limit{gpu_uuid="GPU-eeee"} 700.0' in got

    class NoDeviceList(FakeNvml):
        nvmlDeviceGetCount_v2 = property(lambda self: (_ for _ in ()).throw(AttributeError("undefined symbol")))

    assert not register_gpu_metrics(CollectorRegistry(), NoDeviceList([h200("GPU-ffff")]))
    assert "GPU metrics off: NVML's devices could not be listed (AttributeError: undefined symbol)" in caplog.text
