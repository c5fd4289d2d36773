"""The response cache (server/response_cache.py, --response-cache-mb): what is cached and what never is, its key,
its byte bound, the engine answering a repeated image without computing, and Triton's statistics reporting hits
and misses through tritonclient."""

import time

import numpy as np
import pytest
import tritonclient.http as thttp

from server.client import Client
from server.engine_config import EngineConfig
from server.policy import BUDGET, CONFIDENCE, FINAL
from server.response_cache import ENTRY_OVERHEAD, ResponseCache
from tests.server.helpers import images, png
from tests.server.test_engine import in_loop, make_engine, x
from tests.server.v2_helpers import v2_server

MODEL = "tiny"


def probs(i):
    return np.full(4, i, np.float32)


def test_least_recently_used_goes_first_within_the_byte_bound():
    entry = probs(0).nbytes + ENTRY_OVERHEAD
    cache = ResponseCache(2 * entry)
    keys = [ResponseCache.key(x(i), True, None, 2, ()) for i in range(3)]
    cache.put(keys[0], 0, probs(0), CONFIDENCE)
    cache.put(keys[1], 1, probs(1), FINAL)
    assert cache.get(keys[0]).exit_index == 0  # keys[0] used: keys[1] is now the oldest
    cache.put(keys[2], 2, probs(2), FINAL)
    assert cache.get(keys[1]) is None and cache.get(keys[2]).exit_index == 2 and cache.bytes == 2 * entry
    assert (cache.hits, cache.misses, cache.evictions) == (2, 1, 1)


def test_the_byte_bound_counts_at_least_what_an_entry_really_takes():
    import tracemalloc

    inputs = [np.random.default_rng(i).random((3, 32, 32), dtype=np.float32) for i in range(1000)]
    cache = ResponseCache(10**9)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i, a in enumerate(inputs):  # keys as the engine makes them: a float rule, monitor scales
            cache.put(ResponseCache.key(a, False, 0.5 + i / 1e4, 4, (1.0, 0.5, 1.0, 1.0)), 1, np.ones(10, np.float32), FINAL)
        taken = sum(d.size_diff for d in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    # Counted never below what is taken (the bound is honest); what is taken varies with the process's history
    # (413 B an entry in a full test run, 563 B alone), so the estimate may be up to 2x above it.
    assert taken / len(inputs) <= cache.bytes / len(inputs) <= 2 * taken / len(inputs)


def test_a_budget_stop_is_never_cached_and_a_cached_answer_cannot_be_changed():
    cache = ResponseCache(10_000)
    key = ResponseCache.key(x(1), False, 0.5, 2, ())
    cache.put(key, 0, probs(0), BUDGET)
    assert cache.get(key) is None
    p = probs(3)
    cache.put(key, 1, p, CONFIDENCE)
    p[:] = 9  # the caller's array is not the cached one
    cached = cache.get(key)
    assert cached.probs.tolist() == [3, 3, 3, 3] and not cached.probs.flags.writeable


def test_the_key_holds_everything_the_answer_depends_on():
    base = ResponseCache.key(x(1), True, None, 2, (1.0, 1.0))
    assert base == ResponseCache.key(x(1).copy(), True, None, 2, (1.0, 1.0))  # the same pixels, another array
    for other in (ResponseCache.key(x(2), True, None, 2, (1.0, 1.0)), ResponseCache.key(x(1), False, None, 2, (1.0, 1.0)),
                  ResponseCache.key(x(1), True, 0.9, 2, (1.0, 1.0)), ResponseCache.key(x(1), True, None, 1, (1.0, 1.0)),
                  ResponseCache.key(x(1), True, None, 2, (0.5, 1.0))):  # the monitor made exit 0 stricter
        assert other != base
    with pytest.raises(ValueError, match="must be positive"):
        ResponseCache(0)


def counting(engine):
    runs = []
    for k, backend in enumerate(engine.backends):
        run = backend.run
        backend.run = lambda xs, run=run, k=k: runs.append(k) or run(xs)
    return runs


@in_loop
async def test_a_repeated_image_is_answered_without_computing_and_counted_as_a_hit():
    engine = make_engine(n=3, cfg=EngineConfig(max_batch=8, monitor_fraction=0.0, response_cache_mb=1))
    runs = counting(engine)
    engine.start()
    first = await engine.classify(x(2), time.monotonic(), None, None, None, None, use_policy=True)
    assert (first.exit_index, first.reason, runs) == (0, CONFIDENCE, [0])
    second = await engine.classify(x(2), time.monotonic(), 5.0, None, None, None, use_policy=True)  # any budget
    assert runs == [0] and (second.exit_index, second.reason, second.budget_met) == (0, CONFIDENCE, True)
    assert np.array_equal(first.probs, second.probs)
    await engine.classify(x(2), time.monotonic(), None, None, 1, None)  # another rule (no policy, max_exit 1): computed
    assert runs == [0, 0, 1]
    s = engine.stats.to_triton("fake", "v1")
    assert (s["inference_count"], s["execution_count"]) == (3, 3)
    stats = s["inference_stats"]
    assert (stats["cache_hit"]["count"], stats["cache_miss"]["count"], stats["success"]["count"]) == (1, 2, 3)
    assert engine.metrics.cache_lookups.labels("fake", "hit")._value.get() == 1


@in_loop
async def test_a_hit_counts_in_its_priority_level_s_latency():
    engine = make_engine(n=3, cfg=EngineConfig(max_batch=8, monitor_fraction=0.0, response_cache_mb=1, priority_levels=2))
    engine.start()
    for _ in range(2):
        await engine.classify(x(2), time.monotonic(), None, None, None, None, use_policy=True, priority=2)
    assert engine.cache.hits == 1
    assert engine.metrics.priority_latency.labels("fake", "2")._sum.get() > 0
    counts = [s.value for s in engine.metrics.priority_latency.collect()[0].samples
              if s.name.endswith("_count") and s.labels["priority"] == "2"]
    assert counts == [2.0]  # the computed answer and the hit


@in_loop
async def test_budget_stops_and_progressive_requests_are_not_served_from_the_cache():
    engine = make_engine(n=3, delays=[0.01, 0.0, 0.0], cfg=EngineConfig(max_batch=8, monitor_fraction=0.0, response_cache_mb=1))
    engine.latency.table[:] = 0.05  # every next segment is predicted to take 50 ms: a 20 ms budget stops at exit 0
    runs = counting(engine)
    engine.start()
    for _ in range(2):
        answer = await engine.classify(x(1), time.monotonic(), 20.0, None, None, None)
        assert answer.reason == BUDGET
    assert runs == [0, 0]  # computed both times: a budget stop depends on its moment's load
    seen = []
    await engine.classify(x(3), time.monotonic(), None, None, None, None, use_policy=True, progress=seen.append)
    await engine.classify(x(3), time.monotonic(), None, None, None, None, use_policy=True, progress=seen.append)
    assert runs == [0, 0, 0, 0] and engine.cache.misses == 2  # progressive: no lookup, nothing stored


def test_a_real_server_answers_a_repeated_image_from_the_cache_and_triton_statistics_say_so(tiny_repo):
    with v2_server(tiny_repo, engine=EngineConfig(max_batch=16, response_cache_mb=1)) as (app, target, url):
        image = png(images(1, seed=3)[0])
        with Client(target) as c:
            a, b = (c.classify(image, calibrated_policy=True, top_k=4) for _ in range(2))
        assert (a.label, a.exit_index, a.confidence, list(a.top_k)) == (b.label, b.exit_index, b.confidence, list(b.top_k))
        (m,) = thttp.InferenceServerClient(url).get_inference_statistics(MODEL)["model_stats"]
        s = m["inference_stats"]
        assert (s["cache_hit"]["count"], s["cache_miss"]["count"], m["inference_count"]) == (1, 1, 2)
        assert m["execution_count"] == a.exit_index + 1  # only the first was computed
        # the Open Inference Protocol's outputs from cached (read-only) probabilities: top classes, labels
        pixels = np.stack(images(2, seed=5))
        client = thttp.InferenceServerClient(url)
        outs = []
        for _ in range(2):
            inp = thttp.InferInput("pixels", list(pixels.shape), "UINT8")
            inp.set_data_from_numpy(pixels)
            r = client.infer(MODEL, [inp], outputs=[thttp.InferRequestedOutput("probabilities", class_count=2),
                                                    thttp.InferRequestedOutput("label")])
            outs.append((r.as_numpy("probabilities"), r.as_numpy("label")))
        assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1], outs[1][1])
        assert app.engines[MODEL].cache.hits >= 3
