"""The GPU lease's device-memory line (bench/gpu/serving_check.py): what one model's sessions took, from the server's
own cudaMemGetInfo reading before and after, beside the load check's estimates at the batch it ran."""

from bench.gpu import serving_check
from server import device_memory, load_memory
from server.repository import list_models, load_manifest

MB = 2**20


def test_a_loads_device_memory_beside_its_estimate(tiny_repo, monkeypatch):
    info = load_manifest(list_models(tiny_repo)[0])
    folder = info.exits[0].onnx.parent
    assert serving_check.device_memory_report(info, None, 64) == {
        "read": False, "why": "no CUDA runtime loaded in this process (a CPU provider)"}
    monkeypatch.setattr(device_memory, "cuda_free", lambda: (900 * MB, 1000 * MB))
    monkeypatch.setenv("PATH", "")  # no nvidia-smi: its figure is None, the rest stands
    got = serving_check.device_memory_report(info, (1000 * MB, 1000 * MB), 64)
    assert got == {"read": True, "free_mb_before": 1000.0, "total_mb": 1000.0, "load_took_mb": 100.0,
                   "device_estimate_mb": load_memory.device_needed(folder, 64) / MB,
                   "host_estimate_mb": load_memory.needed(folder, 64, gpu=True) / MB,
                   "free_mb_after": 900.0, "nvidia_smi_free_mb": None}


def test_twice_the_batch_gives_the_activation_factor(tiny_repo, monkeypatch):
    """A chain run at twice the batch that takes 3 MB more of the GPU, over 64 images of the manifest's activations,
    is the factor the estimate's 3.5 stands for."""
    info = load_manifest(list_models(tiny_repo)[0])
    per_image = sum(a for _, a in load_memory.manifest_memory(info.exits[0].onnx.parent))
    free = [(900 * MB, 1000 * MB)]
    monkeypatch.setattr(device_memory, "cuda_free", lambda: free[0])
    ran = []

    def twice():
        ran.append(True)
        free[0] = (900 * MB - 3 * MB, 1000 * MB)

    got = serving_check.device_memory_report(info, (1000 * MB, 1000 * MB), 64, twice)
    assert ran and got["twice_the_batch_added_mb"] == 3.0
    assert got["activation_factor"] == round(3 * MB / (64 * per_image), 3) and got["load_took_mb"] == 100.0


def test_the_gpu_series_the_lease_reports(monkeypatch):
    from server import gpu_metrics
    from tests.server.test_gpu_metrics import FakeNvml, h200

    assert serving_check.gpu_metric_lines() == ["no GPU metrics: NVML could not be loaded, or shows no GPU"]
    monkeypatch.setattr(gpu_metrics, "load_nvml", lambda name=gpu_metrics.LIBRARY: FakeNvml([h200("GPU-dddd")]))
    lines = serving_check.gpu_metric_lines()
    assert 'nv_gpu_utilization{gpu_uuid="GPU-dddd"} 0.37' in lines and len(lines) == 6  # one line a series


def test_a_report_only_step_that_fails_is_reported_not_raised():
    assert serving_check.reported(lambda: 1 / 0) == {"error": "ZeroDivisionError: division by zero"}
    assert serving_check.reported(lambda: [1]) == [1]
