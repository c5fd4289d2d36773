"""Queue policies per priority level (--queue-policy, Triton's default_queue_policy / priority_queue_policy): the
spec and its errors, the bound on a level's waiting requests, the timeout's two actions, and what Triton's model
configuration says."""

import asyncio
import time

import pytest

from server.engine_config import EngineConfig
from server.errors import InvalidInput, QueueFull, QueueTimeout
from server.jobs import ExitQueue, Job
from server.queue_policy import QueuePolicy, level_policies, parse_queue_policy
from server.v2.model import queue_policy_config
from tests.server.test_engine import in_loop, make_engine, x


def with_policies(levels, *specs, **kw):
    return EngineConfig(**{"max_batch": 8, "monitor_fraction": 0.0, "priority_levels": levels,
                           "queue_policies": level_policies(list(specs), levels), **kw})


# --- the spec ----------------------------------------------------------------------------------------------

def test_a_spec_gives_a_level_or_the_default_and_a_level_s_own_replaces_the_default_whole():
    assert parse_queue_policy("max_queue_size=64, timeout_ms=2.5") == (None, QueuePolicy(64, 2.5, "reject"))
    assert parse_queue_policy("2:timeout_action=DELAY") == (2, QueuePolicy(0, 0.0, "delay"))
    policies = level_policies(["max_queue_size=8,timeout_ms=100", "2:timeout_ms=50,timeout_action=delay"], 3)
    # level 2's own policy sets no max_queue_size: 0 (Triton's field default), not the default policy's 8
    assert policies.levels == (QueuePolicy(8, 100.0), QueuePolicy(0, 50.0, "delay"), QueuePolicy(8, 100.0))
    assert policies.default == QueuePolicy(8, 100.0) and policies.of(2) == QueuePolicy(0, 50.0, "delay")
    assert level_policies([], 3) is None
    assert level_policies(["1:max_queue_size=1"], 2).levels == (QueuePolicy(1), QueuePolicy())


@pytest.mark.parametrize("specs, says", [
    (["x:max_queue_size=1"], "the level before ':' must be a whole number (1 is the highest); got 'x'"),
    (["0:max_queue_size=1"], "level 0 does not exist; levels start at 1"),
    (["3:max_queue_size=1"], "level 3 does not exist with --priority-levels 2"),
    (["max_queue_size"], "'max_queue_size' is not key=value"),
    (["max_queue_size=-1"], "max_queue_size must be a whole number in [0, 4294967295] (0: no bound); got '-1'"),
    (["max_queue_size=4294967296"], "max_queue_size must be a whole number in [0, 4294967295]"),
    (["timeout_ms=nan"], "timeout_ms must be a number of milliseconds in [0, 3600000] (0: none); got 'nan'"),
    (["timeout_ms=-5"], "timeout_ms must be a number of milliseconds"),
    (["timeout_action=drop"], "timeout_action must be one of reject, delay; got 'drop'"),
    (["max_queue_size=1,max_queue_size=2"], "max_queue_size given twice"),
    (["allow_timeout_override=true"], "unknown key 'allow_timeout_override' (a request's `timeout` parameter is always"),
    (["max_batch=3"], "unknown key 'max_batch'; keys: max_queue_size, timeout_ms, timeout_action"),
    (["max_queue_size=1", "timeout_ms=3"], "the default queue policy (no 'LEVEL:') is given twice"),
    (["1:max_queue_size=1", "1:timeout_ms=3"], "level 1's queue policy is given twice"),
])
def test_a_bad_spec_is_refused_naming_what_is_wrong(specs, says):
    with pytest.raises(ValueError) as e:
        level_policies(specs, 2)
    assert says in str(e.value)


def test_the_command_refuses_a_bad_policy_before_loading_a_model(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "server", "--repo", str(tmp_path / "none"), "--priority-levels", "2",
                        "--queue-policy", "2:timeout_action=later"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "--queue-policy '2:timeout_action=later': timeout_action must be one of reject, delay; got 'later'" in r.stderr


# --- the engine --------------------------------------------------------------------------------------------

@in_loop
async def test_a_level_s_queue_holds_at_most_max_queue_size_and_the_other_levels_are_not_bounded_by_it():
    # One thread, a slow exit 0: the first request computes, the others wait for exit 0.
    engine = make_engine(n=2, threads=1, delays=[0.2, 0.0], cfg=with_policies(2, "2:max_queue_size=2", max_batch=1))
    engine.start()
    try:
        def ask(priority):
            return asyncio.ensure_future(engine.classify(x(1), time.monotonic(), None, None, None, None, priority=priority))

        running = ask(2)
        await asyncio.sleep(0.02)
        waiting = [ask(2), ask(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match=r"priority level 2's queue is full \(2 requests waiting for the first exit"):
            await engine.classify(x(1), time.monotonic(), None, None, None, None, priority=2)
        with pytest.raises(InvalidInput, match="3 images of priority level 2 in one request; its queue holds at most 2"):
            engine.check_admission(3, 2)
        urgent = [ask(1) for _ in range(3)]  # level 1 has no bound of its own
        answers = await asyncio.gather(running, *waiting, *urgent)
        assert [a.exit_index for a in answers] == [1] * 6
        assert engine.metrics.rejections.labels("fake", "level_queue_full")._value.get() == 1
        assert engine.inflight == 0 and sum(engine.queues[0].per_level.values()) == 0
    finally:
        await engine.stop()


@in_loop
async def test_reject_answers_a_request_when_its_wait_for_exit_0_passes_the_timeout_not_when_it_reaches_the_head():
    engine = make_engine(n=2, threads=1, delays=[0.3, 0.0], cfg=with_policies(1, "timeout_ms=20", max_batch=1))
    engine.start()
    try:
        running = asyncio.ensure_future(engine.classify(x(1), time.monotonic(), None, None, None, None))
        await asyncio.sleep(0.02)  # it computes for 0.3 s: longer than the timeout, but it is no longer waiting
        with pytest.raises(QueueTimeout) as e:
            await engine.classify(x(2), time.monotonic(), None, None, None, None)
        assert not running.done()  # refused while the batch ahead of it still ran, not when the thread came free
        assert isinstance(e.value, QueueFull)  # RESOURCE_EXHAUSTED, as every overload refusal here
        assert str(e.value) == ("waited 20 ms for the first exit, priority level 1's queue policy timeout; retry with "
                                "backoff or on another replica")
        assert (await running).exit_index == 1  # the timer stopped when it left the queue
        assert engine.metrics.dropped.labels("fake", "0", "queue_timeout")._value.get() == 1
        assert engine.inflight == 0 and not engine.queues[0].heap and sum(engine.queues[0].per_level.values()) == 0
    finally:
        await engine.stop()


@in_loop
async def test_delay_puts_a_timed_out_request_behind_its_level_s_others_and_before_the_next_level():
    engine = make_engine(cfg=with_policies(2, "1:timeout_ms=1,timeout_action=delay", max_batch=8))
    engine.queues = [ExitQueue() for _ in range(3)]
    loop, now = asyncio.get_running_loop(), time.monotonic()
    jobs = {}
    for name, priority, due in [("1, timed out", 1, 0.1), ("1, due later", 1, 5.0), ("2, due first", 2, 0.01)]:
        jobs[name] = Job(x(0), now, None, now + due, None, 2, loop.create_future(), priority=priority)
        jobs[name].name = name
        engine._push(0, jobs[name])
    engine._queue_timeout(jobs["1, timed out"])  # what its timer does
    q = engine.queues[0]
    assert q.per_level == {1: 2, 2: 1} and engine.metrics.queue_delayed.labels("fake")._value.get() == 1
    assert [j.name for j in engine._take_batch(0, q)] == ["1, due later", "1, timed out"]  # one level, one batch
    assert [j.name for j in engine._take_batch(0, q)] == ["2, due first"]
    assert not any(j.future.done() for j in jobs.values())  # delayed, never refused


@in_loop
async def test_a_delayed_request_is_answered_and_a_delay_timer_of_a_request_whose_caller_left_does_nothing():
    engine = make_engine(n=2, threads=1, delays=[0.1, 0.0], cfg=with_policies(1, "timeout_ms=30,timeout_action=delay",
                                                                            max_batch=1))
    engine.start()
    try:
        ask = lambda: asyncio.ensure_future(engine.classify(x(1), time.monotonic(), None, None, None, None))  # noqa: E731
        running, delayed, leaving = ask(), ask(), ask()
        await asyncio.sleep(0)  # all three admitted: one computes for 0.1 s, two wait (timers of 30 ms)
        leaving.cancel()  # its caller leaves before its timer fires
        answers = await asyncio.gather(running, delayed)
        assert [a.exit_index for a in answers] == [1, 1]
        assert engine.metrics.queue_delayed.labels("fake")._value.get() == 1  # only the one still waited for
        assert engine.inflight == 0 and not engine.queues[0].heap
    finally:
        await engine.stop()


@in_loop
async def test_an_evicted_request_is_answered_once_preempted_and_never_also_timed_out():
    engine = make_engine(n=2, threads=1, delays=[0.1, 0.0],
                         cfg=with_policies(2, "2:timeout_ms=30", max_batch=1, max_inflight=2))
    engine.start()
    try:
        running = asyncio.ensure_future(engine.classify(x(1), time.monotonic(), None, None, None, None, priority=2))
        await asyncio.sleep(0.01)
        low = asyncio.ensure_future(engine.classify(x(1), time.monotonic(), None, None, None, None, priority=2))
        await asyncio.sleep(0)
        high = await engine.classify(x(1), time.monotonic(), None, None, None, None, priority=1)
        assert high.exit_index == 1 and (await running).exit_index == 1
        with pytest.raises(QueueFull, match="its place went to a priority 1 request"):
            await low
        await asyncio.sleep(0.05)  # past the evicted request's timeout
        assert engine.metrics.dropped.labels("fake", "0", "queue_timeout")._value.get() == 0
        assert engine.metrics.dropped.labels("fake", "0", "preempted")._value.get() == 1 and engine.inflight == 0
    finally:
        await engine.stop()


# --- what Triton's model configuration says ----------------------------------------------------------------

def test_triton_s_model_config_states_the_default_and_each_level_that_differs():
    cfg = with_policies(2, "max_queue_size=8,timeout_ms=100", "1:timeout_ms=2.5,timeout_action=delay")
    assert queue_policy_config(cfg) == {
        "default_queue_policy": {"timeout_action": "REJECT", "default_timeout_microseconds": "100000",
                                 "allow_timeout_override": False, "max_queue_size": 8},
        "priority_queue_policy": {"1": {"timeout_action": "DELAY", "default_timeout_microseconds": "2500",
                                        "allow_timeout_override": False, "max_queue_size": 0}}}
    assert queue_policy_config(with_policies(1)) == {}


def test_tritonclient_reads_the_policies_over_both_surfaces_and_gets_the_refusal(tiny_repo):
    import numpy as np
    import tritonclient.grpc as tgrpc
    import tritonclient.http as thttp

    from tests.server.helpers import images, png
    from tests.server.v2_helpers import v2_server

    engine = with_policies(2, "max_queue_size=4", "1:timeout_ms=0.5,timeout_action=delay")
    with v2_server(tiny_repo, engine=engine) as (_, target, url):
        c = thttp.InferenceServerClient(url)
        policy = c.get_model_config("tiny")["dynamic_batching"]["default_queue_policy"]
        assert policy["max_queue_size"] == 4 and policy["timeout_action"] == "REJECT"
        batching = tgrpc.InferenceServerClient(target).get_model_config("tiny").config.dynamic_batching
        assert batching.default_queue_policy.max_queue_size == 4
        level_1 = batching.priority_queue_policy[1]  # tritonclient's own ModelConfig: Triton's field numbers
        assert (level_1.timeout_action, level_1.default_timeout_microseconds, level_1.max_queue_size) == (1, 500, 0)
        inp = thttp.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([png(images(1)[0])], dtype=object))
        assert c.infer("tiny", [inp]).as_numpy("exit_index") is not None
        five = thttp.InferInput("image", [5], "BYTES")
        five.set_data_from_numpy(np.array([png(im) for im in images(5)], dtype=object))
        with pytest.raises(Exception, match="5 images of priority level 2 in one request; its queue holds at most 4"):
            c.infer("tiny", [five])


def test_a_classify_batch_is_bounded_per_level_by_its_own_items_not_all_of_them_at_its_lowest_level(tiny_repo):
    import grpc

    from protos.auxnet.v1 import inference_pb2 as pb
    from server.client import Client
    from tests.server.conftest import running_server
    from tests.server.helpers import images, png

    data = [png(im) for im in images(4)]
    with running_server(tiny_repo, engine=with_policies(2, "2:max_queue_size=2")) as (_, target):
        with Client(target, retries=0) as c:
            # three at level 1 (no bound) and one at level 2: was refused as four images against level 2's bound
            mixed = pb.ClassifyBatchRequest(requests=[pb.ClassifyRequest(encoded=d, priority=p) for d, p in zip(data, (1, 1, 1, 2))])
            assert len(c.stub.ClassifyBatch(mixed, timeout=30).responses) == 4
            bulk = pb.ClassifyBatchRequest(requests=[pb.ClassifyRequest(encoded=d, priority=2) for d in data[:3]])
            with pytest.raises(grpc.RpcError) as e:
                c.stub.ClassifyBatch(bulk, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == ("3 images of priority level 2 in one request; its queue holds at most 2 (its queue "
                                 "policy's max_queue_size): split the request")
