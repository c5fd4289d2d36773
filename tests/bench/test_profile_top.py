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
