"""Segment runs short enough to run on the event loop's own thread (EngineConfig.inline_compute_ms, issue 14):
which runs go there, where an inline chain stops, and that the answers are the same either way."""

import asyncio
import threading
import types

from server.engine_config import EngineConfig
from tests.server.test_engine import in_loop, make_engine, x


def record_threads(engine) -> list:
    """Wrap every backend's run to record (exit, thread name) of each call."""
    seen = []
    for k, backend in enumerate(engine.backends):
        run = backend.run
        backend.run = lambda batch, k=k, run=run: (seen.append((k, threading.current_thread().name)), run(batch))[1]
    return seen


def inline_runs(engine, k: int) -> float:
    return engine.metrics.registry.get_sample_value("auxnet_inline_segment_runs_total",
                                                    {"model": "fake", "exit": str(k)}) or 0.0


async def classify_all(engine, labels, **kw) -> list:
    now = asyncio.get_running_loop().time()
    return await asyncio.gather(*(engine.classify(x(label), now, None, None, None, None, **kw) for label in labels))


@in_loop
async def test_runs_predicted_within_the_limit_run_on_the_loop_thread():
    engine = make_engine(n=3, cfg=EngineConfig(max_batch=8, monitor_fraction=0.0, inline_compute_ms=0.25))
    engine.latency.table[:] = 0.0001  # 0.1 ms a run: within 0.25 ms
    seen = record_threads(engine)
    engine.start()
    try:
        answers = await classify_all(engine, [0, 1, 2, 3])
    finally:
        await engine.stop()
    assert [int(a.probs.argmax()) for a in answers] == [0, 1, 2, 3] and all(a.exit_index == 2 for a in answers)
    assert {name for _, name in seen} == {threading.main_thread().name}  # asyncio.run's loop runs on it
    assert sum(inline_runs(engine, k) for k in range(3)) == len(seen) and inline_runs(engine, 0) >= 1


@in_loop
async def test_longer_runs_or_a_zero_limit_go_to_segment_threads():
    for limit_ms, predicted_s in ((0.25, 0.001), (0.0, 0.0001)):
        engine = make_engine(n=3, cfg=EngineConfig(max_batch=8, monitor_fraction=0.0, inline_compute_ms=limit_ms))
        engine.latency.table[:] = predicted_s
        seen = record_threads(engine)
        engine.start()
        try:
            answers = await classify_all(engine, [2, 1])
        finally:
            await engine.stop()
        assert [int(a.probs.argmax()) for a in answers] == [2, 1]
        assert seen and all(name != threading.main_thread().name for _, name in seen), (limit_ms, seen)
        assert sum(inline_runs(engine, k) for k in range(3)) == 0


@in_loop
async def test_an_inline_chain_stops_before_the_run_that_would_pass_the_limit(monkeypatch):
    # A fake clock: each segment run takes exactly 0.1 ms, so where the chain stops is decided by arithmetic,
    # not by this machine's speed. Limit 0.25 ms, every run predicted 0.1 ms: after exit 0, 0.1 + 0.1 <= 0.25
    # goes on; after exit 1, 0.2 + 0.1 > 0.25 stops, and exit 2's worker runs the batch in a call of its own.
    clock = [0.0]
    fake_time = types.SimpleNamespace(perf_counter=lambda: clock[0], monotonic=lambda: 1000.0 + clock[0])
    for module in ("server.engine", "server.segment_chain"):  # the chain's runs and the engine's queues
        monkeypatch.setattr(f"{module}.time", fake_time)
    engine = make_engine(n=3, cfg=EngineConfig(max_batch=8, monitor_fraction=0.0, inline_compute_ms=0.25))
    engine.latency.table[:] = 0.0001
    for backend in engine.backends:
        run = backend.run
        backend.run = lambda batch, run=run: (clock.__setitem__(0, clock[0] + 0.0001), run(batch))[1]
    calls = []
    compute = engine._compute
    engine._compute = lambda *a, **kw: (lambda steps: (calls.append([s.k for s in steps]), steps)[1])(compute(*a, **kw))
    engine.start()
    try:
        answers = await classify_all(engine, [3])
    finally:
        await engine.stop()
    assert calls == [[0, 1], [2]] and answers[0].exit_index == 2 and int(answers[0].probs.argmax()) == 3
    assert [inline_runs(engine, k) for k in range(3)] == [1, 1, 1]
    # A limit that fits the whole chain runs it in one call.
    calls.clear()
    engine = make_engine(n=3, cfg=EngineConfig(max_batch=8, monitor_fraction=0.0, inline_compute_ms=0.35))
    engine.latency.table[:] = 0.0001
    for backend in engine.backends:
        run = backend.run
        backend.run = lambda batch, run=run: (clock.__setitem__(0, clock[0] + 0.0001), run(batch))[1]
    compute2 = engine._compute
    engine._compute = lambda *a, **kw: (lambda steps: (calls.append([s.k for s in steps]), steps)[1])(compute2(*a, **kw))
    engine.start()
    try:
        await classify_all(engine, [1])
    finally:
        await engine.stop()
    assert calls == [[0, 1, 2]]


def test_server_answers_the_same_inline_and_on_segment_threads(tiny_repo):
    from server.client import Client
    from tests.server.conftest import running_server
    from tests.server.helpers import images, png

    answers, inline = {}, {}
    for limit_ms in (0.0, 1000.0):  # never inline; always inline (the tiny model's runs are far shorter)
        with running_server(tiny_repo, engine=EngineConfig(max_batch=16, inline_compute_ms=limit_ms)) as (app, target):
            with Client(target) as c:
                answers[limit_ms] = [(r.label, r.exit_index, round(r.confidence, 5))
                                     for r in (c.classify(png(im), calibrated_policy=True) for im in images(12, seed=5))]
                answers[limit_ms] += [(r.label, r.exit_index, round(r.confidence, 5))
                                      for r in c.classify_batch([png(im) for im in images(12, seed=6)])]
            inline[limit_ms] = sum(s.value for m in app.metrics.registry.collect()
                                   if m.name == "auxnet_inline_segment_runs" for s in m.samples)
    assert answers[0.0] == answers[1000.0] and len(answers[0.0]) == 24
    assert inline[0.0] == 0 and inline[1000.0] >= 12  # one-image calls one after another: a batch each at least


def test_a_negative_limit_is_refused_naming_the_flag(tiny_repo):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "server", "--repo", str(tiny_repo), "--inline-compute-ms", "-1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--inline-compute-ms -1 must be in [0, 60000]" in r.stderr
