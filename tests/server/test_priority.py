"""Priority levels (--priority-levels, Triton's schedule-policy `priority`): the order at each exit, eviction at
capacity, the wait a request is predicted to have, and the errors a bad priority gets."""

import asyncio
import time

import pytest

from server.engine_config import EngineConfig
from server.errors import InvalidInput, Preempted, QueueFull
from server.jobs import ExitQueue, Job
from tests.server.test_engine import in_loop, make_engine, x


def levels(n, **kw):
    return EngineConfig(**{"max_batch": 8, "monitor_fraction": 0.0, "priority_levels": n, **kw})


def test_a_request_s_priority_maps_to_a_level_and_one_outside_the_levels_is_refused_by_name():
    one = make_engine(cfg=levels(1))
    assert [one.priority_level(p) for p in (0, 1, 7, 2**40)] == [1, 1, 1, 1]  # no priorities: whatever is sent
    three = make_engine(cfg=levels(3))
    assert [three.priority_level(p) for p in (0, 1, 2, 3)] == [3, 1, 2, 3]  # 0: the default, the lowest
    assert make_engine(cfg=levels(3, default_priority_level=2)).priority_level(0) == 2
    with pytest.raises(InvalidInput, match=r"priority 4 does not exist; valid: 1 \(highest\) .. 3, or 0 for the default level \(3\)"):
        three.priority_level(4)


@in_loop
async def test_each_exit_serves_higher_levels_first_then_earliest_deadline():
    engine = make_engine(cfg=levels(3))
    engine.queues = [ExitQueue() for _ in range(3)]
    loop, now = asyncio.get_running_loop(), time.monotonic()

    def job(name, priority, deadline):
        j = Job(x(0), now, None, now + deadline, None, 2, loop.create_future(), priority=priority)
        j.name = name
        engine._push(0, j)
        return j

    job("3, due first", 3, 0.01)
    job("1, due late", 1, 5.0)
    job("2, due soon", 2, 0.1)
    job("1, due soon", 1, 0.2)
    job("2, due late", 2, 3.0)
    assert engine.queues[0].ahead_of(1) == 2 and engine.queues[0].ahead_of(2) == 4 and engine.queues[0].ahead_of(None) == 5
    batches = [[j.name for j in engine._take_batch(0, engine.queues[0])] for _ in range(3)]
    # one level a batch: a level-2 request riding in a level-1 batch would make it as slow as a full one on a CPU
    assert batches == [["1, due soon", "1, due late"], ["2, due soon", "2, due late"], ["3, due first"]]
    assert sum(engine.queues[0].per_level.values()) == 0 and not engine.queues[0].heap


@in_loop
async def test_eviction_takes_the_lowest_level_first_then_the_shallowest_exit_then_the_latest_deadline():
    engine = make_engine(cfg=levels(3, max_inflight=5))
    engine.queues, engine.accepting = [ExitQueue() for _ in range(3)], True
    loop, now = asyncio.get_running_loop(), time.monotonic()
    queued = {}
    for name, k, priority, due in [("3 at exit 2", 2, 3, 0.5), ("2 at exit 0", 0, 2, 0.5), ("3 at exit 0, due late", 0, 3, 0.9),
                                   ("3 at exit 0, due soon", 0, 3, 0.1), ("1 at exit 1", 1, 1, 0.5)]:
        queued[name] = Job(x(0), now, None, now + due, None, 2, loop.create_future(), priority=priority)
        engine._push(k, queued[name])
        engine._admit()
    with pytest.raises(QueueFull, match="at capacity"):
        engine.check_admission(5, 1)  # only four are below level 1: nobody is evicted
    assert engine.inflight == 5 and not any(j.future.done() for j in queued.values())
    engine.check_admission(1, 2, evict=True)  # a level-2 request: only level 3 goes
    engine._admit()  # (it is admitted)
    engine.check_admission(2, 1, evict=True)
    gone = [name for name, j in queued.items() if j.future.done()]
    assert gone == ["3 at exit 2", "3 at exit 0, due late", "3 at exit 0, due soon"] and engine.inflight == 3
    assert "was queued at exit 2: its place went to a priority 1 request" in str(queued["3 at exit 2"].future.exception())
    assert "was queued: its place went to a priority 2 request" in str(queued["3 at exit 0, due late"].future.exception())
    assert [len(q.heap) for q in engine.queues] == [1, 1, 0]


@in_loop
async def test_at_capacity_a_higher_level_evicts_the_lowest_queued_request_and_the_same_level_is_refused():
    # One thread, a 50 ms exit 0: the first request computes, the others wait at exit 0.
    engine = make_engine(n=2, threads=1, delays=[0.05, 0.0], cfg=levels(3, max_inflight=4, max_batch=1))
    engine.start()
    try:
        arrival = time.monotonic()
        low = [asyncio.ensure_future(engine.classify(x(1), arrival, None, None, None, None, priority=p)) for p in (3, 3, 2, 3)]
        await asyncio.sleep(0.01)  # one runs, three are queued (levels 3, 2, 3)
        with pytest.raises(QueueFull, match="at capacity"):
            await engine.classify(x(1), time.monotonic(), None, None, None, None, priority=3)  # nobody below level 3
        first = asyncio.ensure_future(engine.classify(x(2), time.monotonic(), None, None, None, None, priority=1))
        second = asyncio.ensure_future(engine.classify(x(3), time.monotonic(), None, None, None, None, priority=2))
        assert (await first).exit_index == 1 and (await second).exit_index == 1
        results = await asyncio.gather(*low, return_exceptions=True)
        # the two queued level-3 requests, the latest first... both made room; the running one and level 2 stay
        assert [type(r).__name__ for r in results] == ["Answer", "Preempted", "Answer", "Preempted"]
        assert isinstance(results[1], QueueFull) and "its place went to a priority 1 request" in str(results[3])
        assert "its place went to a priority 2 request" in str(results[1])
        dropped = engine.metrics.dropped.labels("fake", "0", Preempted.reason)._value.get()
        assert dropped == 2 and engine.inflight == 0
        counts = {s.labels["priority"]: s.value for s in engine.metrics.priority_latency.collect()[0].samples
                  if s.name.endswith("_count")}
        assert counts == {"1": 1, "2": 2, "3": 1}  # answered requests by level (two level-3 ones were evicted)
    finally:
        await engine.stop()


@in_loop
async def test_a_request_is_predicted_to_wait_only_behind_its_own_and_higher_levels():
    engine = make_engine(n=2, cfg=levels(2))
    engine.queues = [ExitQueue() for _ in range(2)]
    engine.latency.table[:] = 0.01
    loop = asyncio.get_running_loop()
    for _ in range(16):  # a backlog of the lowest level
        engine._push(0, Job(x(0), time.monotonic(), None, None, None, 1, loop.create_future(), priority=2))
    alone, behind = engine.predict_finish(0, 1), engine.predict_finish(0, 2)
    assert alone == pytest.approx(engine.predict_finish(0, None) - (behind - alone))
    assert alone < behind and alone == pytest.approx(engine.latency.predict(0, 1), rel=0.01)


# --- through the surfaces: auxnet.v1, and Triton's own clients on the Open Inference Protocol ----------------

@pytest.fixture(scope="module")
def two_levels(tiny_repo):
    from tests.server.v2_helpers import v2_server

    with v2_server(tiny_repo, engine=EngineConfig(max_batch=16, priority_levels=2)) as s:
        yield s


def test_auxnet_v1_takes_a_priority_and_refuses_one_the_server_lacks(two_levels):
    import grpc

    from server.client import Client
    from tests.server.helpers import images, png

    _, target, _ = two_levels
    with Client(target, retries=0) as c:
        assert c.classify(png(images(1)[0]), priority=1).class_name and c.classify(png(images(1)[0]), priority=2).class_name
        with pytest.raises(grpc.RpcError) as e:
            c.classify(png(images(1)[0]), priority=3)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "priority 3 does not exist; valid: 1 (highest) .. 2, or 0 for the default level (2)"


@pytest.mark.parametrize("surface", ["grpc", "http"])
def test_tritonclient_s_priority_argument_is_honoured_and_checked(two_levels, surface):
    import numpy as np
    import tritonclient.grpc as tgrpc
    import tritonclient.http as thttp
    from tritonclient.utils import InferenceServerException

    from tests.server.helpers import images, png

    _, target, url = two_levels
    module = tgrpc if surface == "grpc" else thttp
    c = module.InferenceServerClient(target if surface == "grpc" else url)
    inp = module.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([png(images(1)[0])], dtype=object))
    assert c.infer("tiny", [inp], priority=1).as_numpy("exit_index") is not None
    with pytest.raises(InferenceServerException, match="priority 7 does not exist; valid: 1"):
        c.infer("tiny", [inp], priority=7)


def test_triton_s_model_config_and_server_metadata_say_so(two_levels):
    import tritonclient.grpc as tgrpc
    import tritonclient.http as thttp

    _, target, url = two_levels
    c = thttp.InferenceServerClient(url)
    batching = c.get_model_config("tiny")["dynamic_batching"]
    assert batching["priority_levels"] == "2" and batching["default_priority_level"] == "2"
    assert "schedule_policy" in c.get_server_metadata()["extensions"]
    # over gRPC too, parsed by tritonclient's own ModelConfig (it failed INTERNAL: the fields were not in our proto)
    config = tgrpc.InferenceServerClient(target).get_model_config("tiny").config
    assert (config.dynamic_batching.priority_levels, config.dynamic_batching.default_priority_level) == (2, 2)


def test_a_negative_priority_parameter_is_refused_by_name():
    from server.v2.model import parse_parameters

    with pytest.raises(InvalidInput, match="parameter 'priority' must be 0 .* got -1"):
        parse_parameters({"priority": -1})
    assert parse_parameters({"priority": 2})[0].priority == 2


@in_loop
async def test_a_freed_thread_goes_to_the_exit_whose_queue_holds_the_best_request_not_the_first_to_ask():
    from server.thread_gate import ThreadGate

    loop = asyncio.get_running_loop()
    gate = ThreadGate(1)
    await gate.acquire(ExitQueue())  # the only thread is busy
    bulk, urgent, gone = ExitQueue(), ExitQueue(), ExitQueue()
    bulk.push(Job(x(0), 0.0, None, None, None, 2, loop.create_future(), priority=2), key=0.0)
    urgent.push(Job(x(0), 0.0, None, None, None, 2, loop.create_future(), priority=1), key=9.0)
    gone.push(Job(x(0), 0.0, None, None, None, 2, loop.create_future(), priority=1), key=0.0)
    order = []

    async def wants(name, q):
        await gate.acquire(q)
        order.append(name)

    waiting = [asyncio.ensure_future(wants("bulk, asked first", bulk)), asyncio.ensure_future(wants("urgent", urgent)),
               asyncio.ensure_future(wants("cancelled", gone))]
    await asyncio.sleep(0)
    waiting[2].cancel()  # a worker stopped while it waited: it leaves the line
    await asyncio.sleep(0)
    gate.release()
    await asyncio.sleep(0)
    assert order == ["urgent"]
    gate.release()
    await asyncio.sleep(0)
    assert order == ["urgent", "bulk, asked first"] and gate.free == 0 and not gate.waiting
    gate.release()
    assert gate.free == 1


@in_loop
async def test_a_failed_batch_gives_its_thread_back():
    engine = make_engine(n=2, threads=1, cfg=levels(2))
    engine.start()
    try:
        engine.backends[0].fail = RuntimeError("boom")
        with pytest.raises(RuntimeError, match="exit 0 failed"):
            await engine.classify(x(1), time.monotonic(), None, None, None, None, priority=1)
        engine.backends[0].fail = None
        answer = await asyncio.wait_for(engine.classify(x(1), time.monotonic(), None, None, None, None, priority=2), 5)
        assert answer.exit_index == 1 and engine.gate.free == 1
    finally:
        await engine.stop()
