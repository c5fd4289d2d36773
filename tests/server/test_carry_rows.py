"""A batch in which some requests stop goes on in place (EngineConfig.carry_stopped_rows, issue 14): the next
segment runs on every row, the stopped requests' rows as padding, their answers sent at once; the requests
that go on keep their own rows and get the answers they would get otherwise."""

import asyncio
import time

from server.engine_config import EngineConfig
from tests.server.test_engine import in_loop, make_engine, x


def record_batches(engine) -> dict:
    sizes = {k: [] for k in range(len(engine.backends))}
    for k, backend in enumerate(engine.backends):
        run = backend.run
        backend.run = lambda batch, k=k, run=run: (sizes[k].append(len(batch)), run(batch))[1]
    return sizes


async def mixed_batch(engine, labels, stop_at_first):
    """One batch: requests whose label is in `stop_at_first` stop at exit 0 on confidence, the rest go on to
    the final exit. Returns each request's answer and the monotonic time its caller got it."""
    now = time.monotonic()

    async def one(label):
        answer = await engine.classify(x(label), now, None, 0.5 if label in stop_at_first else None, None, None)
        return answer, time.monotonic()

    return await asyncio.gather(*(one(label) for label in labels))


@in_loop
async def test_stopped_rows_are_carried_and_every_answer_keeps_its_own_row():
    results = {}
    for carry in (False, True):
        engine = make_engine(n=3, cfg=EngineConfig(max_batch=8, monitor_fraction=0.0, carry_stopped_rows=carry))
        sizes = record_batches(engine)
        engine.start()
        try:
            got = await mixed_batch(engine, [0, 1, 2, 3], stop_at_first={0, 2})
        finally:
            await engine.stop()
        results[carry] = [(a.exit_index, int(a.probs.argmax()), a.reason) for a, _ in got]
        if carry:
            assert sizes == {0: [4], 1: [4], 2: [4]}  # one batch, in place to the end
        else:
            assert sizes == {0: [4], 1: [2], 2: [2]}  # the two that go on, queued again
    # Labels come from each row's own features: a row mix-up would answer another request's label.
    assert results[True] == results[False] == [(0, 0, "confidence"), (2, 1, "final"), (0, 2, "confidence"),
                                               (2, 3, "final")]


@in_loop
async def test_stopped_requests_are_answered_before_the_carried_chain_ends():
    # Exits 1 and 2 take 0.2 s each: the requests that stopped at exit 0 must not wait for them.
    engine = make_engine(n=3, delays=[0.0, 0.2, 0.2],
                         cfg=EngineConfig(max_batch=8, monitor_fraction=0.0, carry_stopped_rows=True))
    sizes = record_batches(engine)
    engine.start()
    try:
        got = await mixed_batch(engine, [0, 1], stop_at_first={0})
    finally:
        await engine.stop()
    (stopped, t_stopped), (went_on, t_went_on) = got
    assert stopped.exit_index == 0 and went_on.exit_index == 2 and sizes[2] == [2]
    assert t_went_on - t_stopped > 0.3  # answered right after exit 0, not after the 0.4 s that followed


def test_auto_carries_only_where_features_live_on_a_device():
    engine = make_engine(n=3)  # "auto"
    cpu = engine.backends[0]
    assert not engine._carries(cpu)
    device = type("DeviceBackend", (), {"device_type": "cuda", "run_bound": lambda self, x: None})()
    assert engine._carries(device)
    assert make_engine(n=3, cfg=EngineConfig(carry_stopped_rows=True))._carries(cpu)
    assert not make_engine(n=3, cfg=EngineConfig(carry_stopped_rows=False))._carries(device)


def test_server_answers_the_same_with_rows_carried(tiny_repo):
    from server.client import Client
    from tests.server.conftest import running_server
    from tests.server.helpers import images, png

    blobs = [png(im) for im in images(16, seed=21)]
    answers = {}
    for carry in (False, True):
        cfg = EngineConfig(max_batch=16, carry_stopped_rows=carry, monitor_fraction=0.0)
        with running_server(tiny_repo, engine=cfg) as (app, target):
            engine = next(iter(app.engines.values()))
            with Client(target) as c:
                conf = sorted(r.confidence for r in c.classify_batch(blobs, max_exit=0))[8]  # the median at exit 0
                sizes = record_batches(engine)
                answers[carry] = [(r.label, r.exit_index, round(r.confidence, 5))
                                  for r in c.classify_batch(blobs, min_confidence=conf)]
        # Carried, every segment the batch reached ran all 16 rows; queued again, fewer.
        assert (sizes[1] == [16]) == carry, sizes
    assert answers[True] == answers[False]
    exits = [e for _, e, _ in answers[True]]
    assert 0 in exits and max(exits) > 0  # the batch really was mixed: some stopped, some went on


@in_loop
async def test_requests_carried_then_queued_take_their_own_rows_with_them(monkeypatch):
    # A carried chain that ends before the final exit queues the requests that go on with their rows'
    # features. Here it ends on the inline time limit, on a fake clock (each run 0.1 ms, limit 0.25 ms):
    # exit 0 (some stop, the rest carried), exit 1, then 0.2 + 0.1 > 0.25: queued for exit 2.
    import types

    clock = [0.0]
    fake_time = types.SimpleNamespace(perf_counter=lambda: clock[0], monotonic=lambda: 1000.0 + clock[0])
    for module in ("server.engine", "server.segment_chain"):  # the chain's runs and the engine's queues
        monkeypatch.setattr(f"{module}.time", fake_time)
    engine = make_engine(n=3, cfg=EngineConfig(max_batch=8, monitor_fraction=0.0, inline_compute_ms=0.25,
                                               carry_stopped_rows=True))
    engine.latency.table[:] = 0.0001
    sizes = record_batches(engine)
    for backend in engine.backends:
        run = backend.run
        backend.run = lambda batch, run=run: (clock.__setitem__(0, clock[0] + 0.0001), run(batch))[1]
    engine.start()
    try:
        got = await mixed_batch(engine, [0, 1, 2, 3], stop_at_first={0, 2})
    finally:
        await engine.stop()
    assert sizes == {0: [4], 1: [4], 2: [2]}  # carried through exit 1, then queued: only their own rows
    assert [(a.exit_index, int(a.probs.argmax())) for a, _ in got] == [(0, 0), (2, 1), (0, 2), (2, 3)]


def test_static_buffers_answer_the_same_with_rows_carried(monkeypatch):
    """Carried rows through static buffers (the leases a CUDA graph needs), the monitor sampling on: the same
    answers as plain runs queued again, for one batch whose requests stop at different exits."""
    import numpy as np

    from server.backends import OnnxRuntimeBackend
    from server.engine import ModelEngine
    from server.repository import load_manifest
    from server.static_batches import static_chain
    from tests.server.test_static_batches import DEFAULT_MODEL, engine_answers

    info = load_manifest(DEFAULT_MODEL)
    xs = np.random.default_rng(9).standard_normal((16, 3, 32, 32)).astype(np.float32)  # one batch of 16
    requests = [(x, [None, 0.5, 0.9][i % 3]) for i, x in enumerate(xs)]
    plain, _ = engine_answers(info, [OnnxRuntimeBackend(e.onnx) for e in info.exits], requests, False)
    sent_early = []
    send_now = ModelEngine._send_now
    monkeypatch.setattr(ModelEngine, "_send_now", lambda self, step, on_loop: (sent_early.append(step.k),
                                                                               send_now(self, step, on_loop))[1])
    carried, samples = engine_answers(info, static_chain([e.onnx for e in info.exits], "cpu", 16), requests, True)
    assert carried == plain and len({e for e, _, _, _ in carried}) >= 2 and samples > 0
    assert sent_early  # the batch really was carried past a segment where some of it stopped
