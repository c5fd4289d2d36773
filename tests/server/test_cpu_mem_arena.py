"""--cpu-mem-arena false (server/backends.py): ONNX Runtime's CPU arena off in every session the server opens, the
same answers as with it, the load estimate without held activations, and the combinations it does not apply to
refused by name."""

import subprocess
import sys

import tritonclient.grpc as tgrpc

from server import load_memory
from server.backends import OnnxRuntimeBackend
from server.client import Client
from tests.server.conftest import running_server
from tests.server.helpers import images, png
from tests.server.test_load_memory import MODEL


def test_the_sessions_run_without_the_arena_and_answer_the_same(tiny_repo):
    onnx = tiny_repo / MODEL / "exit_0.onnx"
    assert OnnxRuntimeBackend(onnx).session.get_session_options().enable_cpu_mem_arena is True
    assert OnnxRuntimeBackend(onnx, cpu_mem_arena=False).session.get_session_options().enable_cpu_mem_arena is False
    answers = {}
    for arena in (True, False):
        with running_server(tiny_repo, cpu_mem_arena=arena) as (app, target):
            assert all(b.session.get_session_options().enable_cpu_mem_arena is arena for b in app.engines[MODEL].backends)
            with Client(target) as c:
                answers[arena] = [(r.class_name, r.confidence, r.exit_index)
                                  for r in (c.classify(png(x), max_exit=1) for x in images(6, seed=3))]
    assert answers[False] == answers[True]  # the same kernels: bit for bit


def test_the_estimate_without_the_arena_by_hand(tiny_repo):
    folder = tiny_repo / MODEL
    parts = load_memory.manifest_memory(folder)
    by_hand = int(sum(2**20 + 2 * w + load_memory.ACTIVATION_COPIES_NO_ARENA * a * 32 for w, a in parts)) + 8 * 2**20
    assert load_memory.needed(folder, 32, cpu_mem_arena=False) == by_hand < load_memory.needed(folder, 32)


def test_a_load_while_serving_is_judged_without_the_arena(tiny_repo, monkeypatch):
    with running_server(tiny_repo, model_control="explicit", cpu_mem_arena=False) as (app, target):
        seen = []
        monkeypatch.setattr(load_memory, "needed", lambda *a: seen.append(a) or 2**20)
        tgrpc.InferenceServerClient(target).load_model(MODEL)
        assert seen[0][1:] == (16, False, False, False)  # max_batch, static batches, arena, gpu


def test_combinations_it_does_not_apply_to_are_refused(tmp_path):
    for extra in (["--static-batches"], ["--backend", "tensorrt"]):
        r = subprocess.run([sys.executable, "-m", "server", "--repo", str(tmp_path), "--cpu-mem-arena", "false", *extra],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "--cpu-mem-arena false is for the onnxruntime backend without --static-batches" in r.stderr
