"""bench/profile_top.py: py-spy's raw stacks summarised by hand-countable examples."""

from bench.profile_top import summarise

RAW = """\
main (a.py:1);loop (a.py:5);run (b.py:9) 6
main (a.py:1);loop (a.py:5);decode (c.py:3) 3
main (a.py:1);loop (a.py:5);loop (a.py:5) 1

"""


def test_self_and_inclusive_counts_by_hand():
    total, own, inclusive = summarise(RAW.splitlines(), top=10)
    assert total == 10
    assert own == [("run (b.py:9)", 6), ("decode (c.py:3)", 3), ("loop (a.py:5)", 1)]
    # A recursive frame counts once per stack: loop is on all 10 samples, not 11.
    assert dict(inclusive) == {"main (a.py:1)": 10, "loop (a.py:5)": 10, "run (b.py:9)": 6, "decode (c.py:3)": 3}
    assert summarise(RAW.splitlines(), top=1)[1] == [("run (b.py:9)", 6)]


def test_samples_by_the_code_they_are_in():
    from bench.profile_top import by_code, where

    assert where("run (onnxruntime/capi/onnxruntime_inference_collection.py:406)") == "onnxruntime"
    assert where("_compute (server/engine.py:420)") == "server/engine.py"
    assert where("run (threading.py:982)") == "threading"
    raw = ["a (asyncio/events.py:80);b (server/engine.py:10) 4", "a (asyncio/events.py:80) 2",
           "a (asyncio/events.py:80);c (server/engine.py:99) 1"]
    assert by_code(raw) == [("server/engine.py", 5), ("asyncio", 2)]
