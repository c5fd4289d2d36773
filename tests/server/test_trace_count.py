"""trace_count shared by the --workers processes (server/trace_count.py): a count of N lets N traces through in
all, not N per worker."""

from __future__ import annotations

import multiprocessing

from server.trace_count import SharedTraceCount
from server.tracing import Tracer, TraceSettings


def test_two_workers_take_the_count_between_them_exactly_once(tmp_path):
    here, there = SharedTraceCount(tmp_path), SharedTraceCount(tmp_path)
    here.start("", 5)
    there.start("", 99)  # a later worker's start-up count does not give back what is left
    taken = [(w.take("") is not None) for w in (here, there) * 4]
    assert taken == [True] * 5 + [False] * 3
    assert here.left("") == there.left("") == 0 and here.take("") is None
    there.set("", 2)  # a settings call: what is left now, for every worker
    assert here.take("") == 1 and there.take("") == 0 and here.take("") is None
    here.close()
    there.close()


def test_no_limit_stays_no_limit_and_a_scope_never_written_gives_nothing(tmp_path):
    counts = SharedTraceCount(tmp_path)
    counts.start("", -1)
    assert [counts.take("") for _ in range(3)] == [-1, -1, -1] and counts.left("") == -1
    assert counts.take("never-set") is None and counts.left("never-set") is None
    counts.close()


def test_any_model_name_is_a_file_of_its_own_in_the_folder(tmp_path):
    counts = SharedTraceCount(tmp_path)
    names = ["a/../../b", "modèle", ".hidden", "x" * 1000]
    for i, name in enumerate(names):
        counts.set(name, i + 1)
    assert [counts.left(n) for n in names] == [1, 2, 3, 4] and counts.left("") is None
    assert all(p.parent == tmp_path for p in map(counts.path, names))
    counts.close()


def _take_all(folder: str, out) -> None:
    counts = SharedTraceCount(folder)
    n = 0
    while counts.take("m") is not None:
        n += 1
    out.put(n)


def test_processes_taking_at_once_never_take_more_than_the_count(tmp_path):
    SharedTraceCount(tmp_path).set("m", 3000)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_take_all, args=(str(tmp_path), out)) for _ in range(3)]
    for p in procs:
        p.start()
    got = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    assert sum(got) == 3000 and SharedTraceCount(tmp_path).left("m") == 0


def tracers(tmp_path, n: int = 2) -> list[Tracer]:
    folder = tmp_path / "state"
    folder.mkdir()
    return [Tracer(TraceSettings(str(tmp_path / f"t.json.worker{i}")), own_file=True, shared_count=SharedTraceCount(folder))
            for i in range(n)]


def test_tracers_of_two_workers_trace_the_count_in_all_and_report_what_is_left(tmp_path):
    here, there = tracers(tmp_path)
    here.update("", {"trace_level": ["TIMESTAMPS"], "trace_rate": ["1"], "trace_count": ["3"]})
    there.adopt(here.shared())
    traced = [t.sample("m", "v", 0.0, None, 1) is not None for t in (here, there) * 3]
    assert traced == [True, True, True, False, False, False]
    assert here.settings()["trace_count"] == there.settings()["trace_count"] == "0"
    here.update("", {"trace_rate": ["1"]})  # a change that does not name trace_count gives none back
    there.adopt(here.shared())
    assert not any(t.sample("m", "v", 0.0, None, 1) for t in (here, there))
    there.update("", {"trace_count": ["1"]})
    here.adopt(there.shared())
    assert [t.sample("m", "v", 0.0, None, 1) is not None for t in (here, there)] == [True, False]
    here.close()
    there.close()


def test_a_models_own_count_starts_from_what_the_workers_have_left_and_counts_apart(tmp_path):
    here, there = tracers(tmp_path)
    here.update("", {"trace_level": ["TIMESTAMPS"], "trace_rate": ["1"], "trace_count": ["4"]})
    there.adopt(here.shared())
    assert there.sample("m", "v", 0.0, None, 1) and there.sample("m", "v", 0.0, None, 1)  # 2 of the 4 taken there
    here.update("m", {"log_frequency": ["2"]})  # m's first settings of its own: the global ones, 2 left
    there.adopt(here.shared())
    assert here.settings("m")["trace_count"] == there.settings("m")["trace_count"] == "2"
    assert [t.sample("m", "v", 0.0, None, 1) is not None for t in (there, here, there)] == [True, True, False]
    assert here.settings()["trace_count"] == "2"  # the global scope's count is its own
    assert [t.sample("other", "v", 0.0, None, 1) is not None for t in (here, there, here)] == [True, True, False]
    here.close()
    there.close()


def test_a_models_cleared_count_follows_what_the_workers_have_left_globally(tmp_path):
    here, there = tracers(tmp_path)
    here.update("", {"trace_level": ["TIMESTAMPS"], "trace_rate": ["1"], "trace_count": ["3"]})
    here.update("m", {"trace_count": ["10"], "log_frequency": ["2"]})
    there.adopt(here.shared())
    assert there.sample("x", "v", 0.0, None, 1) and there.sample("x", "v", 0.0, None, 1)  # 1 global trace left
    here.update("m", {"trace_count": None})  # m's count is the global one again: 1, not the 3 `here` last saw
    assert here.settings("m")["trace_count"] == "1"
    here.close()
    there.close()
