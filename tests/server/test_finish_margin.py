"""The finish-prediction correction for budgets (server/latency.py FinishError, issue 14): a recent quantile
of how late segments finished against their prediction is added to the next prediction."""

import time
from concurrent.futures import Future

import numpy as np
import pytest

from server.engine_config import EngineConfig
from server.jobs import ExitQueue, Job
from server.latency import FinishError
from server.policy import BUDGET
from tests.server.test_engine import in_loop, make_engine, x


def test_margin_is_the_quantile_of_recent_errors_by_hand():
    f = FinishError(quantile=0.9, window=64)
    for i in range(31):
        f.observe(i / 1000, now=10.0)
    assert f.margin(10.0) == 0.0  # 31 < MIN_SAMPLES: no correction yet
    f.observe(0.031, now=10.0)  # 32 observations: 0, 1, ..., 31 ms
    assert f.margin(10.0) == pytest.approx(np.quantile(np.arange(32) / 1000, 0.9))  # 27.9 ms
    assert f.margin(10.0) == pytest.approx(0.0279)
    for _ in range(15):
        f.observe(1.0, now=10.5)
    assert f.margin(10.5) == pytest.approx(0.0279)  # refreshed every 16 observations only
    f.observe(1.0, now=10.5)  # 48: 0..31 ms and sixteen 1 s errors; the 0.9 quantile is in the 1 s ones
    assert f.margin(10.5) == pytest.approx(1.0)
    for _ in range(64):  # the window keeps the last 64 only: all 5 ms now
        f.observe(0.005, now=10.6)
    assert f.margin(10.6) == pytest.approx(0.005)


def test_a_margin_with_no_recent_observation_is_forgotten():
    # Only requests that went on are observed: if the margin made every budgeted request stop, nothing would
    # revise it. After STALE_S without an observation it reads 0, and the next observation starts afresh.
    f = FinishError(quantile=0.5)
    for _ in range(32):
        f.observe(0.004, now=100.0)
    assert f.margin(100.0 + FinishError.STALE_S) == pytest.approx(0.004)
    assert f.margin(100.0 + FinishError.STALE_S + 0.01) == 0.0
    f.observe(0.001, now=102.0)
    assert f.count == 1 and f.margin(102.0) == 0.0  # the old errors are gone, not mixed with new ones


def test_the_margin_turns_a_go_on_into_a_budget_stop_and_the_prediction_is_judged_uncorrected():
    engine = make_engine(n=3, cfg=EngineConfig(max_batch=8, monitor_fraction=0.0, finish_margin_quantile=0.9))
    engine.queues = [ExitQueue() for _ in engine.backends]  # as start() makes them, without workers
    engine.latency.table[:] = 0.002  # the next segment, idle: predicted to finish 2 ms from now
    now = time.monotonic()

    def job():  # 3 ms of budget left: fits 2 ms, not 2 ms + a 1.5 ms margin
        return Job(x(1), now, now + 0.003, None, None, 2, Future())

    going_on = job()
    assert engine._decide(0, [going_on], None, [None], now) == [None]
    assert going_on.predicted_finish == pytest.approx(now + 0.002, rel=0, abs=1e-9)
    engine.finish_error.margin_s, engine.finish_error.last_s = 0.0015, now
    stopped = job()
    assert engine._decide(0, [stopped], None, [None], now) == [BUDGET] and stopped.predicted_finish is None
    roomy = Job(x(1), now, now + 0.004, None, None, 2, Future())  # 4 ms left: goes on despite the margin,
    assert engine._decide(0, [roomy], None, [None], now) == [None]
    assert roomy.predicted_finish == pytest.approx(now + 0.002, rel=0, abs=1e-9)  # judged against the raw 2 ms: no feedback loop
    going_on.predicted_finish = now + 0.002
    engine._observe_finish([going_on], now + 0.0035)
    assert engine.finish_error.errors[engine.finish_error.count - 1] == pytest.approx(0.0015)
    assert going_on.predicted_finish is None  # observed once


def test_the_answer_lag_margin_adds_to_the_finish_error_margin():
    engine = make_engine(n=3, cfg=EngineConfig(max_batch=8, monitor_fraction=0.0, finish_margin_quantile=0.9))
    engine.queues = [ExitQueue() for _ in engine.backends]
    engine.latency.table[:] = 0.002
    now = time.monotonic()
    engine.finish_error.margin_s, engine.finish_error.last_s = 0.0006, now
    engine.answer_lag.margin_s, engine.answer_lag.last_s = 0.0006, now
    # 3 ms left: 2 ms + 0.6 ms fits, 2 ms + 0.6 + 0.6 ms does not
    assert engine._decide(0, [Job(x(1), now, now + 0.003, None, None, 2, Future())], None, [None], now) == [BUDGET]
    engine.answer_lag.margin_s = 0.0
    assert engine._decide(0, [Job(x(1), now, now + 0.003, None, None, 2, Future())], None, [None], now) == [None]


@in_loop
async def test_a_budget_is_judged_when_the_answer_reaches_its_handler_and_that_lag_is_observed():
    engine = make_engine(n=3, cfg=EngineConfig(max_batch=8, monitor_fraction=0.0, finish_margin_quantile=0.9))
    apply = engine._apply

    def apply_then_block_the_loop(step, last):  # the answer is set, then the loop is busy for 60 ms before the
        apply(step, last)                       # handler resumes: as a loop full of other requests' work is
        time.sleep(0.06)

    engine._apply = apply_then_block_the_loop
    engine.start()
    arrival = time.monotonic()
    answer = await engine.classify(x(1), arrival, budget_ms=40, min_confidence=None, max_exit=0, deadline=None)
    resumed = time.monotonic() - arrival
    assert answer.exit_index == 0 and answer.budget_met is False  # decided at ~0 ms: it would have said met
    assert 0.06 <= answer.latency_s <= resumed
    assert engine.answer_lag.count == 1 and engine.answer_lag.errors[0] >= 0.06
    misses = engine.metrics.budget_misses.labels("fake")._value.get()
    assert misses == 1


def test_requests_with_only_a_grpc_deadline_are_not_observed():
    # Earliest deadline first puts them behind every budget: their lateness is not what a budget meets.
    engine = make_engine(n=3, cfg=EngineConfig(max_batch=8, monitor_fraction=0.0, finish_margin_quantile=0.9))
    engine.queues = [ExitQueue() for _ in engine.backends]
    engine.latency.table[:] = 0.002
    now = time.monotonic()
    deadline_only = Job(x(1), now, None, now + 10.0, None, 2, Future())
    budgeted = Job(x(1), now, now + 0.01, now + 10.0, None, 2, Future())
    assert engine._decide(0, [deadline_only, budgeted], None, [None, None], now) == [None, None]
    assert deadline_only.predicted_finish is None
    assert budgeted.predicted_finish == pytest.approx(now + 0.002, rel=0, abs=1e-9)


def test_the_correction_can_be_turned_off():
    engine = make_engine(n=3, cfg=EngineConfig(max_batch=8, monitor_fraction=0.0, finish_margin_quantile=0.0))
    engine.queues = [ExitQueue() for _ in engine.backends]
    engine.latency.table[:] = 0.002
    now = time.monotonic()
    j = Job(x(1), now, now + 0.003, None, None, 2, Future())
    assert engine.finish_error is None and engine._decide(0, [j], None, [None], now) == [None]
    engine._observe_finish([j], now + 0.01)  # nothing to feed: the prediction is simply dropped
    assert j.predicted_finish is None


def test_a_quantile_outside_0_1_is_refused_naming_the_flag(tiny_repo):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "server", "--repo", str(tiny_repo), "--finish-margin-quantile", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--finish-margin-quantile 1.0 must be in [0, 1)" in r.stderr
