"""Loads on a GPU are checked against the GPU's free memory (server/device_memory.py, server/load_memory.py): the
CUDA runtime is looked up only where one is already loaded, its answer read through real ctypes pointers, the
estimate split between host and device by hand, the refusal naming the GPU's figures, and the app passing its
device floor through to a real load (no GPU here: the runtime is a stand-in with the CUDA runtime's signatures)."""

import ctypes
import json
import subprocess
import sys

import pytest
import tritonclient.grpc as tgrpc

from server import device_memory, load_memory
from server.errors import InsufficientMemory
from server.load_memory import Available, device_needed, needed
from tests.server.conftest import running_server
from tests.server.test_model_control import MODEL, copy_repo, refused

MB = 2**20
CUDA_ERROR_NO_DEVICE = 100


class FakeRuntime:
    """cudaSetDevice and cudaMemGetInfo as libcudart exports them: an int error code, results written through the
    pointers passed (ctypes.byref, as device_memory passes them)."""

    def __init__(self, free: int, total: int, set_error: int = 0, info_error: int = 0):
        self.free, self.total, self.set_error, self.info_error = free, total, set_error, info_error
        self.devices = []

    def cudaSetDevice(self, device):  # noqa: N802 - the C function's name
        self.devices.append(device)
        return self.set_error

    def cudaMemGetInfo(self, free_ptr, total_ptr):  # noqa: N802
        ctypes.cast(free_ptr, ctypes.POINTER(ctypes.c_size_t))[0] = self.free
        ctypes.cast(total_ptr, ctypes.POINTER(ctypes.c_size_t))[0] = self.total
        return self.info_error


def test_the_runtime_is_found_only_where_the_process_already_loaded_it():
    """RTLD_NOLOAD: a library on disk but not loaded is not loaded by the lookup (no second CUDA runtime beside
    ONNX Runtime's); once loaded (here sqlite's, from wherever Python found it) it is found by its soname."""
    script = ("import sqlite3 as _; from server.device_memory import loaded_runtime as f; import sys; "
              "sys.exit(0 if f(('libsqlite3.so.0',)) is not None else 1)")
    before = ("from server.device_memory import loaded_runtime as f; import sys; "
              "r = f(('libsqlite3.so.0',)); import sqlite3; sys.exit(0 if r is None else 1)")
    for code in (script, before):
        assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    assert device_memory.loaded_runtime(("libcudart.so.13", "libno-such-library.so.1")) is None
    assert device_memory.cuda_free() is None  # no CUDA runtime in this process: nothing read, nothing checked


def test_free_and_total_are_read_through_the_runtimes_pointers():
    runtime = FakeRuntime(free=70 * 2**30, total=141 * 2**30)
    assert device_memory.cuda_free(runtime) == (70 * 2**30, 141 * 2**30)
    assert runtime.devices == [0]  # ONNX Runtime's CUDA provider's default device, which the server keeps
    assert device_memory.cuda_free(FakeRuntime(1, 2, set_error=CUDA_ERROR_NO_DEVICE)) is None  # an error is no figure
    assert device_memory.cuda_free(FakeRuntime(1, 2, info_error=2)) is None


def test_on_a_gpu_the_host_keeps_sessions_and_weights_the_device_the_rest(tiny_repo):
    folder = (tiny_repo / MODEL).resolve()
    parts = [e["memory"] for e in json.loads((folder / "manifest.json").read_text())["exits"]]
    host = sum(MB + p["weight_bytes"] for p in parts) + 8 * MB
    assert needed(folder, 32, gpu=True) == host
    assert needed(folder, 128, gpu=True) == host  # activations are not host memory there
    by_hand = lambda images: int(sum(48 * MB + 2 * p["weight_bytes"] + 3.5 * p["activation_bytes_per_image"] * images  # noqa: E731
                                     for p in parts))
    assert device_needed(folder, 32) == by_hand(32) and device_needed(folder, 64) == by_hand(64)
    assert device_needed(folder, 8, static_batches=True) == by_hand(1 + 2 + 4 + 8)
    assert load_memory.on_gpu("cuda") and load_memory.on_gpu("tensorrt-ep") and load_memory.on_gpu("cpu", "tensorrt")
    assert not load_memory.on_gpu("cpu") and not load_memory.on_gpu("auto")


def test_the_gpu_refusal_names_the_gpus_figures(tiny_repo, monkeypatch):
    folder = (tiny_repo / MODEL).resolve()
    need = device_needed(folder, 32)
    free = [need + 1024 * MB]  # exactly the floor left: loads
    monkeypatch.setattr(load_memory, "available", lambda: Available(64 * 2**30, "a test's figure"))
    monkeypatch.setattr(device_memory, "cuda_free", lambda: (free[0], 141 * 2**30))
    load_memory.check(MODEL, folder, 256 * MB, gpu=True, device_floor_bytes=1024 * MB)
    free[0] -= 1
    with pytest.raises(InsufficientMemory) as e:
        load_memory.check(MODEL, folder, 256 * MB, gpu=True, device_floor_bytes=1024 * MB)
    assert str(e.value) == (f"load of model 'tiny' refused: it needs ~{need / MB:.0f} MB of GPU memory (estimated from "
                            f"its export's figures at batch cap 32), {free[0] / MB:.0f} MB is available (free on CUDA "
                            "device 0 of 144384 MB), and a load leaves at least 1024 MB (--device-memory-floor-mb); "
                            "unload a model or serve it from another GPU")
    load_memory.check(MODEL, folder, 256 * MB, gpu=False, device_floor_bytes=1024 * MB)  # sessions on the CPU
    load_memory.check(MODEL, folder, 256 * MB, gpu=True, device_floor_bytes=None)  # the GPU check off
    monkeypatch.setattr(device_memory, "cuda_free", lambda: None)  # no runtime loaded yet: nothing to judge by
    load_memory.check(MODEL, folder, 256 * MB, gpu=True, device_floor_bytes=1024 * MB)
    # --workers: each process holds its own sessions on the one GPU
    monkeypatch.setattr(device_memory, "cuda_free", lambda: (3 * need + 1024 * MB, 141 * 2**30))
    load_memory.check(MODEL, folder, 256 * MB, copies=3, gpu=True, device_floor_bytes=1024 * MB)
    with pytest.raises(InsufficientMemory, match=r"GPU memory \(4 worker processes, a copy each\)"):
        load_memory.check(MODEL, folder, 256 * MB, copies=4, gpu=True, device_floor_bytes=1024 * MB)
    # the host is still checked first, with the host's share
    monkeypatch.setattr(load_memory, "available", lambda: Available(needed(folder, gpu=True) + 256 * MB - 1, "host"))
    with pytest.raises(InsufficientMemory, match=r"MB of memory .* \(--load-memory-floor-mb\)"):
        load_memory.check(MODEL, folder, 256 * MB, gpu=True, device_floor_bytes=1024 * MB)


def test_a_server_on_a_gpu_refuses_a_load_the_gpu_cannot_hold(tiny_repo, tmp_path, monkeypatch):
    """The app's wiring: --device cuda (stood in for: the sessions here run on the CPU) makes a load while serving
    ask the GPU's free memory against --device-memory-floor-mb, and what serves serves on."""
    repo = copy_repo(tiny_repo, tmp_path)
    monkeypatch.setattr(load_memory, "on_gpu", lambda device, backend="onnxruntime": True)
    monkeypatch.setattr(load_memory, "available", lambda: Available(64 * 2**30, "a test's figure"))
    with running_server(repo, model_control="explicit", http_port=0) as (app, target):
        assert app._serves_on_gpu() and app.cfg.device_memory_floor_bytes == 1024 * MB  # the default floor
        c = tgrpc.InferenceServerClient(target)
        monkeypatch.setattr(device_memory, "cuda_free", lambda: (1100 * MB, 141 * 2**30))  # ~100 MB needed at cap 16
        status, message = refused(lambda: c.load_model(MODEL))
        assert status == "StatusCode.RESOURCE_EXHAUSTED" and "MB of GPU memory" in message
        assert "1100 MB is available (free on CUDA device 0 of 144384 MB)" in message and MODEL not in app.engines
        monkeypatch.setattr(device_memory, "cuda_free", lambda: (80 * 2**30, 141 * 2**30))
        c.load_model(MODEL)
        assert MODEL in app.engines


def test_the_floor_option_reaches_the_config():
    from server.__main__ import parse_args, server_config

    floor = lambda *argv: server_config(parse_args(["--repo", "r", *argv])).device_memory_floor_bytes  # noqa: E731
    assert floor() == 1024 * MB and floor("--device-memory-floor-mb", "512") == 512 * MB
    assert floor("--device-memory-floor-mb", "-1") is None  # no check
    with pytest.raises(SystemExit) as e:
        parse_args(["--repo", "r", "--device-memory-floor-mb", "-2"])
    assert e.value.code == 2


def test_a_load_on_a_gpu_states_both_estimates_and_metrics_carry_the_gpus(tiny_repo, monkeypatch):
    """Sessions that report the GPU (here CPU sessions saying so: their runs are the CPU's) make the load's host
    estimate the sessions and weights, and its GPU estimate a series of its own on /metrics."""
    import asyncio

    from prometheus_client import generate_latest

    from server import app as app_module
    from server.app import ServerApp, ServerConfig
    from server.engine_config import EngineConfig

    real = app_module.make_backend

    def says_cuda(*args, **kwargs):
        backend = real(*args, **kwargs)
        backend.device_type = "cuda"
        return backend

    monkeypatch.setattr(app_module, "make_backend", says_cuda)
    app = ServerApp(ServerConfig(repo=str(tiny_repo), port=0, metrics_port=None, http_port=None,
                                 engine=EngineConfig(max_batch=4)))
    folder = (tiny_repo / MODEL).resolve()
    engine = app._load_engine(folder, MODEL)
    assert engine.memory_estimate == needed(folder, 4, gpu=True) and engine.device_memory_estimate == device_needed(folder, 4)

    async def series():
        engine.start()
        body = generate_latest(app.metrics.registry).decode()
        await engine.stop()
        return body, generate_latest(app.metrics.registry).decode()

    serving, stopped = asyncio.run(series())
    name = f'auxnet_model_device_memory_estimate_bytes{{model="tiny",version="{engine.info.version}"}}'
    assert [float(line.split()[-1]) for line in serving.splitlines() if line.startswith(name)] == [device_needed(folder, 4)]
    assert name not in stopped  # a version let go leaves no series behind


def test_a_runtime_without_the_functions_gives_no_figure():
    class Bare:  # a library that is not the CUDA runtime after all
        pass

    assert device_memory.cuda_free(Bare()) is None
