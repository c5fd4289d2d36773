"""Static-shape segment runs (server/static_batches.py, issue 14): bucketed, pre-bound buffers, features
chained between segments without copies, the lease protocol that keeps a buffer from being rewritten
while wanted, and the engine answering the same with them. On the CPU provider: the CUDA graph capture
itself is GPU-only and unverified."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from server.backends import OnnxRuntimeBackend
from server.engine import ModelEngine
from server.engine_config import EngineConfig
from server.metrics import Metrics
from server.policy import CONFIDENCE
from server.repository import load_manifest
from server.static_batches import FeaturesLease, buckets_up_to, static_chain

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "repository" / "auxnet56_5-cifar10"


def test_buckets_are_powers_of_two_then_the_cap():
    assert buckets_up_to(32) == [1, 2, 4, 8, 16, 32]
    assert buckets_up_to(48) == [1, 2, 4, 8, 16, 32, 48]
    assert buckets_up_to(1) == [1]
    with pytest.raises(ValueError, match="at least 1"):
        buckets_up_to(0)


@pytest.fixture(scope="module")
def default_chains():
    paths = [e.onnx for e in load_manifest(DEFAULT_MODEL).exits]
    return static_chain(paths, "cpu", 16), [OnnxRuntimeBackend(p) for p in paths]


def plain_chain(plain, x):
    """Every exit's logits and every segment's features, by plain runs."""
    logits, features = [], []
    for b in plain:
        out = b.run(x)
        logits.append(out[-1])
        if len(out) == 2:
            features.append(out[0])
            x = out[0]
    return logits, features


@pytest.mark.parametrize("n", [1, 3, 7, 16])
def test_chained_runs_match_plain_runs_for_padded_and_full_buckets(default_chains, n):
    static, plain = default_chains
    x = np.random.default_rng(n).standard_normal((n, 3, 32, 32)).astype(np.float32)
    want_logits, want_features = plain_chain(plain, x)
    lease = x
    for k, b in enumerate(static):
        out = b.run_bound(lease)
        assert out[-1].shape == (n, 10)  # padding rows never leave the backend
        np.testing.assert_allclose(out[-1], want_logits[k], rtol=0, atol=1e-5)
        if k < len(static) - 1:
            assert isinstance(out[0], FeaturesLease) and out[0].bucket == b.bucket_for(n) and b.lock.locked()
            lease = out[0]
    assert not any(b.lock.locked() for b in static)  # each run released the lease it read
    # The host path (latency calibration, the monitor) gives the features themselves.
    out = static[1].run(want_features[0])
    np.testing.assert_allclose(out[0], want_features[1], rtol=0, atol=1e-5)
    assert not static[1].lock.locked()


def test_lease_protocol_refuses_misuse_and_never_leaks_a_lock(default_chains):
    static, _ = default_chains
    x = np.zeros((2, 3, 32, 32), np.float32)
    lease = static[0].run_bound(x)[0]
    with pytest.raises(ValueError, match="previous segment"):
        static[2].run_bound(lease)  # segment 2 reads segment 1's buffers, not segment 0's
    assert static[0].lock.locked() and not static[2].lock.locked()
    kept = lease.copy()  # copies and keeps the lease (a carried batch's monitor copy): still readable
    assert static[0].lock.locked() and kept.shape == (2, 16, 32, 32)
    kept[:] = 7.0  # a copy, not a view of the buffer
    feats = lease.to_host()  # copies and releases
    assert not (feats == 7.0).any()
    assert feats.shape == (2, 16, 32, 32) and not static[0].lock.locked()
    with pytest.raises(RuntimeError, match="already released"):
        lease.to_host()
    with pytest.raises(ValueError, match="previous segment, or was released"):
        static[1].run_bound(lease)
    assert not static[1].lock.locked()
    with pytest.raises(ValueError, match="batch of 17 exceeds the largest bucket \\(16\\)"):
        static[0].run_bound(np.zeros((17, 3, 32, 32), np.float32))
    assert not any(b.lock.locked() for b in static)


def test_host_copies_do_not_alias_the_buffers(default_chains):
    """On the CPU provider an OrtValue's numpy() is a view of the bound buffer: what leaves must be a copy."""
    static, _ = default_chains
    a = static[0].run(np.ones((1, 3, 32, 32), np.float32))
    kept = [o.copy() for o in a]
    static[0].run(np.full((1, 3, 32, 32), -3.0, np.float32))
    for got, want in zip(a, kept):
        np.testing.assert_array_equal(got, want)


def test_concurrent_chains_on_shared_buffers_stay_correct(default_chains):
    """Four threads run whole chains of mixed sizes at once (chained and host inputs) on the same buffers:
    every answer equals the plain run's, and nobody deadlocks."""
    static, plain = default_chains
    rng = np.random.default_rng(5)
    inputs = [rng.standard_normal((int(rng.integers(1, 9)), 3, 32, 32)).astype(np.float32) for _ in range(24)]
    expected = [plain_chain(plain, x)[0] for x in inputs]
    errors = []

    def work(i):
        x = inputs[i]
        lease = x if i % 2 else static[0].run(x)[0]  # odd: chained from exit 0; even: host input at exit 1
        start = 0 if i % 2 else 1
        for k in range(start, len(static)):
            out = static[k].run_bound(lease)
            if np.abs(out[-1] - expected[i][k]).max() > 1e-5:
                errors.append((i, k))
            if len(out) == 2:
                lease = out[0]

    done = threading.Event()

    def all_work():
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(work, range(len(inputs))))
        done.set()

    threading.Thread(target=all_work, daemon=True).start()
    assert done.wait(120), "static chains deadlocked"
    assert errors == [] and not any(b.lock.locked() for b in static)


def engine_answers(info, backends, requests, carry_stopped_rows="auto"):
    """Answers of a real engine to concurrent requests (so that they batch), with the monitor on."""

    async def run():
        cfg = EngineConfig(max_batch=16, monitor_fraction=1.0, carry_stopped_rows=carry_stopped_rows)
        engine = ModelEngine(info, backends, cfg, Metrics(), ThreadPoolExecutor(2), 2)
        engine.start()
        now = time.monotonic()
        answers = await asyncio.gather(*(engine.classify(x, now, None, conf, None, None) for x, conf in requests))
        await asyncio.sleep(0.2)  # let the monitor carry its samples to the final exit through the same buffers
        samples = sum(m.samples for m in engine.monitors or [])
        await engine.stop()
        return [(a.exit_index, a.reason, int(a.probs.argmax()), round(float(a.probs.max()), 4)) for a in answers], samples

    return asyncio.run(run())


def test_engine_answers_the_same_with_static_batches():
    """Requests that stop at different exits inside one batch (the rest go on with features copied out of
    the buffers), the final exit reached through chained buffers, and the agreement monitor sampling."""
    info = load_manifest(DEFAULT_MODEL)
    rng = np.random.default_rng(9)
    xs = rng.standard_normal((24, 3, 32, 32)).astype(np.float32)
    requests = [(x, [None, 0.5, 0.9][i % 3]) for i, x in enumerate(xs)]
    plain, _ = engine_answers(info, [OnnxRuntimeBackend(e.onnx) for e in info.exits], requests)
    static, samples = engine_answers(info, static_chain([e.onnx for e in info.exits], "cpu", 16), requests)
    assert static == plain
    exits = {e for e, _, _, _ in static}
    assert len(exits) >= 2 and any(r == CONFIDENCE for _, r, _, _ in static)  # a mix, not one path
    assert samples > 0


def test_server_flag_runs_static_batches(tiny_repo):
    from server.client import Client
    from tests.server.conftest import running_server
    from tests.server.helpers import images, png

    answers = {}
    for static in (False, True):
        with running_server(tiny_repo, static_batches=static) as (app, target):
            assert app.engines["tiny"].backends[0].name.endswith("+static") == static
            with Client(target) as c:
                answers[static] = [(r.label, r.exit_index, round(r.confidence, 5))
                                   for r in (c.classify(png(im)) for im in images(6, seed=3))]
    assert answers[True] == answers[False]


def test_static_batches_refuse_what_they_cannot_run(tiny_repo):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    onnx = [e.onnx for e in load_manifest(tiny_repo / "tiny").exits]
    with pytest.raises(ValueError, match="cpu or cuda; got 'auto'"):
        static_chain(onnx, "auto", 4)
    with pytest.raises(RuntimeError, match="needs onnxruntime-gpu"):
        static_chain(onnx, "cuda", 4)


def test_cuda_provider_options_ask_for_graphs_and_the_tf32_choice(tiny_repo, monkeypatch):
    """What the CUDA provider is asked for (it cannot run here: the session falls back to the CPU, which the
    backends then refuse by name): CUDA graphs for static batches, TF32 on, off or left to the default, and
    ONNX Runtime's preload of the CUDA libraries once."""
    import onnxruntime as ort

    import server.backends as backends

    onnx = load_manifest(tiny_repo / "tiny").exits[0].onnx
    preloads, asked, real = [], [], ort.InferenceSession
    monkeypatch.setattr(backends, "_cuda_libraries_loaded", False)
    monkeypatch.setattr(ort, "preload_dlls", lambda: preloads.append(1), raising=False)
    OnnxRuntimeBackend(onnx, device="cpu")
    assert preloads == []  # the CPU provider needs no CUDA libraries
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession",
                        lambda path, opts, providers: (asked.append(providers), real(path, opts, providers=["CPUExecutionProvider"]))[1])
    for tf32 in (False, True, None):
        with pytest.raises(RuntimeError, match="fell back to the CPU"):
            OnnxRuntimeBackend(onnx, device="cuda", tf32=tf32)
    with pytest.raises(RuntimeError, match="fell back to the CPU"):
        static_chain([onnx], "cuda", 4, tf32=False)
    assert asked == [[("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"],
                     [("CUDAExecutionProvider", {"use_tf32": "1"}), "CPUExecutionProvider"],
                     ["CUDAExecutionProvider", "CPUExecutionProvider"],
                     [("CUDAExecutionProvider", {"enable_cuda_graph": "1", "use_tf32": "0"})]]
    assert preloads == [1]  # CUDA and cuDNN loaded from NVIDIA's pip packages once, before the first CUDA session
