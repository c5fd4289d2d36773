"""The engine alone, on fake backends: the exit rule, the latency model and finish prediction, EDF order and
starvation, shedding, failures, stop and reload forwarding, compute timing (issue 12)."""

import asyncio
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import server.latency
from server.engine import ModelEngine
from server.engine_config import EngineConfig
from server.errors import NotServing, QueueFull
from server.jobs import ExitQueue, Job
from server.latency import LatencyModel
from server.metrics import Metrics
from server.policy import BUDGET, CONFIDENCE, FINAL, MAX_EXIT, stop_reason
from server.repository import ExitInfo, ModelInfo

CLASSES = 4


class FakeBackend:
    """Segment k: features = x; logits put `x[0]` (clipped to a class index) far ahead, so the label is
    known from the input; optional delay and failure."""

    def __init__(self, final: bool, delay_s: float = 0.0, tag: float = 0.0):
        self.final, self.delay_s, self.tag, self.fail = final, delay_s, tag, None
        self.name = "fake"

    def run(self, x):
        if self.fail:
            raise self.fail
        if self.delay_s:
            time.sleep(self.delay_s)
        logits = np.zeros((len(x), CLASSES), np.float32)
        logits[np.arange(len(x)), np.clip(x[:, 0].astype(int), 0, CLASSES - 1)] = 10.0 + self.tag
        return [logits] if self.final else [x.copy(), logits]


def fake_info(n=3, version="v1"):
    exits = tuple(ExitInfo(k, 2 * k + 3, Path(f"exit_{k}.onnx"), None, (2,), None if k == n - 1 else (2,), 1.0,
                           0.9 if k < n - 1 else 0.0, float(k + 1), 1, 0.5, {}) for k in range(n))
    return ModelInfo("fake", Path(f"/tmp/fake-{version}"), {"exits": [{}] * n, "architecture": "fake"}, exits,
                     tuple(f"c{i}" for i in range(CLASSES)), (2, 1, 1), (0.0,), (1.0,))


def make_engine(n=3, threads=2, delays=None, cfg=None, tag=0.0):
    backends = [FakeBackend(k == n - 1, (delays or [0.0] * n)[k], tag) for k in range(n)]
    cfg = cfg or EngineConfig(max_batch=8, monitor_fraction=0.0)
    engine = ModelEngine(fake_info(n), backends, cfg, Metrics(), ThreadPoolExecutor(threads), threads)
    engine.latency.table[:] = 0.001
    return engine


def in_loop(test):
    """Run an async test in a fresh event loop (the project has no pytest-asyncio)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return wrapper


def x(label):
    return np.array([label, 0.0], np.float32)


# --- the exit rule ------------------------------------------------------------------------------------

def test_stop_reason_checks_in_order():
    assert stop_reason(2, 2, 2, 0.1, 0.9, 0.0, 9.0, 1.0) == FINAL
    assert stop_reason(1, 2, 1, 0.1, None, 0.0, 0.0, None) == MAX_EXIT
    assert stop_reason(0, 2, 2, 0.95, 0.9, 0.0, 9.0, 1.0) == CONFIDENCE  # confidence before budget
    assert stop_reason(0, 2, 2, 0.5, 0.9, 0.0, 1.5, 1.0) == BUDGET  # next exit would end at 1.5 > 1.0
    assert stop_reason(0, 2, 2, 0.5, 0.9, 0.0, 0.5, 1.0) is None
    assert stop_reason(0, 2, 2, 0.5, None, 0.0, 0.5, None) is None


# --- latency model and finish prediction -------------------------------------------------------------

def test_latency_model_by_hand(monkeypatch):
    m = LatencyModel(1, 4)
    m.table[0, 1:] = [0.010, 0.015, 0.020, 0.040]
    assert m.predict(0, 9) == 0.040 and m.predict(0, 0) == 0.010
    # 5 queued, a batch of 4 running: one full batch of 4 ahead (0.04), the running one whole (0.04: it may have
    # just started), then ours at batch 5 % 4 + 1 = 2 (0.015). A running batch of 1: 0.010; none running: 0.
    assert m.predict_wait_and_run(0, 5, 4) == pytest.approx(0.04 + 0.04 + 0.015)
    assert m.predict_wait_and_run(0, 5, 1) == pytest.approx(0.04 + 0.010 + 0.015)
    assert m.predict_wait_and_run(0, 5, 0) == pytest.approx(0.04 + 0.015)
    m.observe(0, 2, 0.025)
    assert m.table[0, 2] == pytest.approx(0.8 * 0.015 + 0.2 * 0.025)
    # A run of b images takes 1 ms per image on a clock of the test's own (a real sleep's overshoot on a loaded
    # machine once made batch 1 measure slower than batch 4): batches 1, 2, 4 measured, 3 interpolated.
    clock, calls = [0.0], []
    monkeypatch.setattr(server.latency, "time", SimpleNamespace(perf_counter=lambda: clock[0]))  # this module's only

    def run(batch):
        calls.append(len(batch))
        clock[0] += 0.001 * len(batch)

    m.calibrate(0, run, np.zeros(2), repeats=1)
    assert sorted(set(calls)) == [1, 2, 4] and m.table[0, 1:].tolist() == pytest.approx([0.001, 0.002, 0.003, 0.004])


@in_loop
async def test_predict_finish_counts_own_queue_and_shared_threads():
    engine = make_engine(threads=2)
    engine.latency.table[:, 1:] = np.array([[0.001] * 8, [0.002] * 8, [0.004] * 8])
    engine.start()
    try:
        q0, q1, q2 = engine.queues
        q0.heap.extend([None] * 3)
        q2.busy = True
        own = engine.latency.predict_wait_and_run(0, 3, 0)  # 0.001 at batch 4
        # backlog: exit 0 holds 3 at 0.001/8 each; exit 2 runs one batch, counted whole: 0.004.
        backlog = 3 * 0.001 / 8 + 0.004
        assert engine.predict_finish(0) == pytest.approx(max(own, backlog / 2 + 0.001))
        # The busy exit's share is its batch's real size: one request at batch-1 cost, not a full batch's.
        engine.latency.table[2, 1:] = np.linspace(0.001, 0.008, 8)
        q2.busy_batch = 1
        assert engine.predict_finish(0) == pytest.approx(max(own, (3 * 0.001 / 8 + 0.001) / 2 + 0.001))
        q2.busy_batch = 8
        assert engine.predict_finish(0) == pytest.approx(max(own, (3 * 0.001 / 8 + 0.008) / 2 + 0.001))
        q0.heap.clear()
        q2.busy = False
    finally:
        await engine.stop()


# --- queue order ---------------------------------------------------------------------------------------

@in_loop
async def test_earliest_deadline_first_and_no_starvation():
    engine = make_engine(cfg=EngineConfig(max_batch=8, monitor_fraction=0.0, undeadlined_due_ms=1000))
    engine.queues = [ExitQueue() for _ in range(3)]
    loop = asyncio.get_running_loop()
    now = time.monotonic()

    def job(name, arrival, budget_end=None, deadline=None):
        j = Job(x(0), arrival, budget_end, deadline, None, 2, loop.create_future())
        j.name = name
        engine._push(0, j)
        return j

    job("no deadline, just arrived", now)
    job("budget in 0.3 s", now, budget_end=now + 0.3)
    job("grpc deadline in 0.1 s", now, deadline=now + 0.1)
    job("no deadline, waiting 2 s", now - 2.0)  # due at now - 1.0: ahead of every fresh deadline
    job("budget 0.5 s, deadline 0.2 s", now, budget_end=now + 0.5, deadline=now + 0.2)
    order = [j.name for j in engine._take_batch(0, engine.queues[0])]
    assert order == ["no deadline, waiting 2 s", "grpc deadline in 0.1 s", "budget 0.5 s, deadline 0.2 s",
                     "budget in 0.3 s", "no deadline, just arrived"]


@in_loop
async def test_request_without_deadline_is_served_under_sustained_deadline_traffic():
    # One segment thread, a 20 ms segment, deadline traffic that always has 8 requests queued: before the fix
    # the request without a deadline sorted after every one of them and never ran.
    engine = make_engine(n=1, threads=1, delays=[0.02], cfg=EngineConfig(max_batch=1, monitor_fraction=0.0,
                                                                         undeadlined_due_ms=200))
    engine.start()
    stop = asyncio.Event()

    pending = set()

    async def deadline_traffic():
        async def one():
            now = time.monotonic()
            await engine.classify(x(1), now, None, None, None, now + 5.0)

        while not stop.is_set():
            while len(pending) < 8:
                task = asyncio.ensure_future(one())
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.sleep(0.005)

    traffic = asyncio.ensure_future(deadline_traffic())
    await asyncio.sleep(0.1)
    try:
        t0 = time.monotonic()
        answer = await asyncio.wait_for(engine.classify(x(2), t0, None, None, None, None), timeout=3.0)
        assert int(answer.probs.argmax()) == 2 and time.monotonic() - t0 < 1.0
    finally:
        stop.set()
        await traffic
        await asyncio.gather(*pending, return_exceptions=True)
        await engine.stop()


# --- admission, failures, stop ------------------------------------------------------------------------

@in_loop
async def test_shedding_at_the_inflight_limit():
    engine = make_engine(n=1, delays=[0.05], cfg=EngineConfig(max_batch=8, max_inflight=2, monitor_fraction=0.0))
    engine.start()
    now = time.monotonic()
    first = [asyncio.ensure_future(engine.classify(x(1), now, None, None, None, None)) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull, match=r"at capacity \(2 requests in flight\)"):
        await engine.classify(x(1), now, None, None, None, None)
    assert all(int(a.probs.argmax()) == 1 for a in await asyncio.gather(*first))
    assert engine.metrics.rejections.labels("fake", "queue_full")._value.get() == 1
    await engine.stop()


@in_loop
async def test_backend_failure_fails_that_batch_and_the_worker_goes_on():
    engine = make_engine()
    engine.start()
    engine.backends[1].fail = MemoryError("out of device memory")
    with pytest.raises(RuntimeError, match="exit 1 failed: MemoryError: out of device memory"):
        await asyncio.wait_for(engine.classify(x(3), time.monotonic(), None, None, None, None), 5)
    # exit 1 failed inside a chain started at exit 0: no exit is left marked busy, the engine is quiet again
    assert not any(q.busy for q in engine.queues) and engine._quiet.is_set()
    engine.backends[1].fail = None
    answer = await asyncio.wait_for(engine.classify(x(3), time.monotonic(), None, None, None, None), 5)
    assert (answer.exit_index, int(answer.probs.argmax())) == (2, 3)
    await engine.stop()


@in_loop
async def test_a_batch_that_cannot_be_stacked_fails_alone_and_the_worker_survives():
    engine = make_engine()
    engine.start()
    now = time.monotonic()
    # Two inputs of different shapes in one batch: np.stack raises. Before the fix the exception killed the
    # exit's worker and every later request waited forever.
    bad = [asyncio.ensure_future(engine.classify(v, now, None, None, None, None)) for v in (x(1), np.zeros(3, np.float32))]
    results = await asyncio.wait_for(asyncio.gather(*bad, return_exceptions=True), 5)
    assert all(isinstance(r, RuntimeError) and "exit 0 failed" in str(r) for r in results)
    answer = await asyncio.wait_for(engine.classify(x(2), time.monotonic(), None, None, None, None), 5)
    assert int(answer.probs.argmax()) == 2
    await engine.stop()


@in_loop
async def test_stop_answers_queued_and_computing_requests_unavailable():
    engine = make_engine(n=2, threads=1, delays=[0.2, 0.0], cfg=EngineConfig(max_batch=1, monitor_fraction=0.0))
    engine.start()
    now = time.monotonic()
    calls = [asyncio.ensure_future(engine.classify(x(1), now, None, None, None, None)) for _ in range(3)]
    await asyncio.sleep(0.05)  # one computing, two queued; none has a deadline
    await engine.stop()
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 2)
    assert all(isinstance(r, NotServing) and "stopped before answering" in str(r) for r in results)
    assert engine.inflight == 0


@in_loop
async def test_requests_reaching_a_retired_version_are_forwarded_to_its_successor():
    old, new = make_engine(), make_engine(tag=5.0)
    old.start()
    new.start()
    await old.retire(new, settle_s=0.0, timeout_s=1.0)
    answer = await asyncio.wait_for(old.classify(x(1), time.monotonic(), None, None, None, None), 5)
    assert answer.probs.max() > 0.99 and old.inflight == 0 and new.inflight == 0
    # The successor's backends answered: its logits carry the tag (10 + 5 against zeros).
    z = np.zeros(CLASSES)
    z[1] = 15.0
    expected = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    np.testing.assert_allclose(answer.probs, expected, rtol=1e-6)
    await new.stop()


@in_loop
async def test_compute_time_excludes_the_wait_for_a_thread():
    # One thread shared by two exits of 50 ms each: a batch often waits ~50 ms for the thread. The latency
    # model must learn 50 ms, not 100.
    engine = make_engine(n=2, threads=1, delays=[0.05, 0.05], cfg=EngineConfig(max_batch=1, monitor_fraction=0.0))
    seen = []
    observe = engine.latency.observe
    engine.latency.observe = lambda k, b, s: (seen.append(s), observe(k, b, s))
    engine.start()
    now = time.monotonic()
    await asyncio.gather(*(engine.classify(x(1), now, None, None, None, None) for _ in range(4)))
    assert len(seen) == 8 and max(seen) < 0.08, seen
    await engine.stop()


def test_io_binding_keeps_features_in_the_backend_and_matches_plain_runs(tiny_repo):
    import onnxruntime as ort

    from server.backends import OnnxRuntimeBackend
    from server.repository import load_manifest

    info = load_manifest(tiny_repo / "tiny")
    backends = [OnnxRuntimeBackend(e.onnx) for e in info.exits]
    x = np.random.default_rng(0).standard_normal((5, *info.input_shape)).astype(np.float32)
    plain, bound = x, x
    for k, b in enumerate(backends):
        expected = b.run(plain)
        got = b.run_bound(bound)
        np.testing.assert_allclose(got[-1], expected[-1], rtol=0, atol=1e-6)
        if k < len(backends) - 1:
            assert isinstance(got[0], ort.OrtValue) and got[0].device_name() == "cpu"  # not copied out
            plain, bound = expected[0], got[0]  # the OrtValue goes straight into the next segment


def test_engine_answers_the_same_with_io_binding_forced_on(tiny_repo):
    from server.client import Client
    from tests.server.conftest import running_server
    from tests.server.helpers import images, png

    answers = {}
    for binding in (False, True):
        with running_server(tiny_repo, engine=EngineConfig(max_batch=16, io_binding=binding)) as (app, target):
            with Client(target) as c:
                answers[binding] = [(r.label, r.exit_index, round(r.confidence, 5))
                                    for r in (c.classify(png(im)) for im in images(8, seed=77))]
    assert answers[True] == answers[False] and all(e == 1 for _, e, _ in answers[True])


def test_cuda_requested_but_cpu_running_is_refused(tiny_repo, monkeypatch):
    # A CPU build told that CUDA is available does what a broken CUDA install does: onnxruntime creates the
    # session on the CPU provider and only warns. The backend must refuse, naming why.
    import onnxruntime as ort

    from server.backends import OnnxRuntimeBackend
    from server.repository import load_manifest

    onnx = load_manifest(tiny_repo / "tiny").exits[0].onnx
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(RuntimeError, match="could not start CUDAExecutionProvider .* fell back to the CPU"):
        OnnxRuntimeBackend(onnx, device="cuda")
    assert OnnxRuntimeBackend(onnx, device="cpu").name == "onnxruntime:CPUExecutionProvider"



def test_probabilities_only_where_a_request_may_or_does_stop():
    """A request passing through an exit with no threshold there needs no softmax (issue 12); where it stops
    (final, max_exit, budget) or may stop (a threshold), the calibrated probabilities are computed."""

    engine = make_engine(n=3)
    engine.queues = [ExitQueue() for _ in engine.backends]  # as start() makes them, without workers
    from concurrent.futures import Future

    job = lambda max_exit, conf=None: Job(x(2), time.monotonic(), None, None, conf, max_exit, Future())  # noqa: E731
    steps = engine._compute(0, [job(2)], x(2)[None])
    assert [s.probs is None for s in steps] == [True, True, False] and steps[-1].reasons == [FINAL]
    steps = engine._compute(0, [job(1)], x(2)[None])
    assert steps[0].probs is None and steps[1].reasons == [MAX_EXIT] and int(steps[1].probs.argmax()) == 2
    steps = engine._compute(0, [job(2, conf=0.99)], x(2)[None])
    assert steps[0].probs is not None and steps[0].reasons == [CONFIDENCE]
    np.testing.assert_allclose(steps[0].probs.sum(axis=1), 1.0, rtol=1e-6)


def test_gpu_backends_run_every_batch_size_before_serving():
    """cuDNN times its convolution algorithms on each new input shape's first run: on a GPU provider every
    batch size runs once at start-up, so that no request pays for it; on the CPU only the calibration sizes."""
    seen = {}

    def engine_with(device_type):
        engine = make_engine(n=2, cfg=EngineConfig(max_batch=6, monitor_fraction=0.0))
        for k, b in enumerate(engine.backends):
            b.device_type = device_type
            run = b.run
            b.run = lambda x, k=k, run=run: (seen.setdefault((device_type, k), set()).add(len(x)), run(x))[1]
        return engine

    engine_with("cuda").calibrate_latency()
    engine_with("cpu").calibrate_latency()
    assert seen[("cuda", 0)] == seen[("cuda", 1)] == {1, 2, 3, 4, 5, 6}
    assert seen[("cpu", 0)] == {1, 2, 4, 6}  # the calibration's own sizes, the rest interpolated


@in_loop
async def test_a_request_without_budget_gets_the_default_one():
    """--default-budget-ms: a request that sends no budget is answered as if it had sent that one."""
    answers = {}
    for default in (0.0, 20.0):
        engine = make_engine(n=3, cfg=EngineConfig(max_batch=8, monitor_fraction=0.0, default_budget_ms=default))
        engine.latency.table[:] = 0.05  # every segment predicted at 50 ms: only exit 0 fits 20 ms
        engine.start()
        now = time.monotonic()
        answers[default] = (await engine.classify(x(1), now, None, None, None, None),
                            await engine.classify(x(1), now, 1000.0, None, None, None))  # its own budget wins
        await engine.stop()
    plain, own = answers[0.0]
    assert (plain.exit_index, plain.reason) == (2, "final") and (own.exit_index, own.reason) == (2, "final")
    defaulted, own = answers[20.0]
    assert (defaulted.exit_index, defaulted.reason) == (0, "budget") and (own.exit_index, own.reason) == (2, "final")
