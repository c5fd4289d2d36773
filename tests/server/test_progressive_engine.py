"""Progressive answers in the engine (Job.progress): a request that asks for them gets the answer of every exit
it passes, from its own row, as soon as that exit is computed, once; requests batched with it are unaffected,
with stopped rows carried in place or not; a chain through idle exits runs on while the answers go out."""

import asyncio
import time

import pytest

from server.engine_config import EngineConfig
from tests.server.test_engine import in_loop, make_engine, x


async def batch_with_progressive(engine, labels, stop_at_first, progressive):
    """One batch: labels in `stop_at_first` stop at exit 0 on confidence, the rest go to the final exit; those in
    `progressive` record (exit, label, reason, when) of each answer sent before their last."""
    now = time.monotonic()
    seen = {label: [] for label in progressive}

    async def one(label):
        record = (lambda a, label=label: seen[label].append((a.exit_index, int(a.probs.argmax()), a.reason,
                                                               time.monotonic()))) if label in progressive else None
        answer = await engine.classify(x(label), now, None, 0.5 if label in stop_at_first else None, None, None,
                                       progress=record)
        return answer, time.monotonic()

    answers = await asyncio.gather(*(one(label) for label in labels))
    return answers, seen


@pytest.mark.parametrize("carry", [False, True], ids=["requeued", "carried"])
@in_loop
async def test_every_exit_passed_answers_from_its_own_row_and_the_batch_is_unaffected(carry):
    engine = make_engine(n=3, cfg=EngineConfig(max_batch=8, monitor_fraction=0.0, carry_stopped_rows=carry))
    engine.start()
    try:
        answers, seen = await batch_with_progressive(engine, [0, 1, 2, 3], stop_at_first={0, 2}, progressive={1, 2})
    finally:
        await engine.stop()
    assert [(a.exit_index, int(a.probs.argmax()), a.reason) for a, _ in answers] == [
        (0, 0, "confidence"), (2, 1, "final"), (0, 2, "confidence"), (2, 3, "final")]
    # Label 1 passes exits 0 and 1 before its final answer; label 2 stops at exit 0, so it passes none.
    assert [(k, label, reason) for k, label, reason, _ in seen[1]] == [(0, 1, "continued"), (1, 1, "continued")]
    assert seen[2] == []


@in_loop
async def test_each_answer_is_sent_while_the_chain_runs_on_in_one_call():
    # Exits 1 and 2 take 0.2 s each. Alone, with nobody waiting, the batch runs all three segments in one thread
    # call (§9's chain); a progressive request's answers must still leave as each exit is computed, not at the end.
    engine = make_engine(n=3, delays=[0.0, 0.2, 0.2])
    calls = []
    compute = engine._compute
    engine._compute = lambda *a, **k: (calls.append(a[0]), compute(*a, **k))[1]
    engine.start()
    try:
        answers, seen = await batch_with_progressive(engine, [4], stop_at_first=set(), progressive={4})
    finally:
        await engine.stop()
    (final, t_final), = answers
    assert final.exit_index == 2 and [k for k, *_ in seen[4]] == [0, 1]
    t_first, t_second = seen[4][0][3], seen[4][1][3]
    assert t_final - t_first > 0.3 and t_final - t_second > 0.15  # each sent when its exit was computed
    assert calls == [0]  # one call from exit 0 to the end: no trip through the queues for the answers


@pytest.mark.parametrize("inline", [False, True], ids=["pool-thread", "event-loop"])
@in_loop
async def test_a_chain_sends_each_progressive_answer_once(inline):
    """Answers sent while the chain ran on are not sent again when the chain's steps are applied at its end."""
    cfg = EngineConfig(max_batch=8, monitor_fraction=0.0, inline_compute_ms=1000.0 if inline else 0.0)
    engine = make_engine(n=4, cfg=cfg)
    engine.start()
    try:
        answers, seen = await batch_with_progressive(engine, [1, 2], stop_at_first=set(), progressive={1, 2})
    finally:
        await engine.stop()
    assert [a.exit_index for a, _ in answers] == [3, 3]
    for label in (1, 2):
        assert [(k, got) for k, got, _, _ in seen[label]] == [(0, label), (1, label), (2, label)]
