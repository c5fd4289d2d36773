"""Request traces (server/tracing.py, Triton's trace extension): what a trace holds exit by exit, sampling, the
files and their frequency, failed requests, the settings and their errors, and Triton's clients changing them
over gRPC and HTTP."""

import asyncio
import json
import subprocess
import sys
import time

import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from server.client import Client
from server.engine_config import EngineConfig
from server.errors import DeadlineExceeded, FailedPrecondition, InvalidInput, QueueFull
from server.trace_summary import render, summarise
from server.tracing import Tracer, TraceSettings, setting_values
from server.workers import worker_argv
from tests.server.helpers import images, png
from tests.server.test_engine import in_loop, make_engine, x
from tests.server.v2_helpers import v2_server

MODEL = "tiny"


def traced_engine(path, **settings):
    engine = make_engine(n=3)
    engine.tracer = Tracer(TraceSettings(str(path), "TIMESTAMPS", **{"rate": 1, **settings}))
    return engine


def read(path):
    return json.loads(path.read_text())


def names(trace):
    return [t["name"] for t in trace["timestamps"]]


@in_loop
async def test_a_trace_follows_a_request_exit_by_exit(tmp_path):
    engine = traced_engine(tmp_path / "t.json")
    engine.start()
    answer = await engine.classify(x(2), time.monotonic(), budget_ms=500, min_confidence=None, max_exit=1, deadline=None)
    engine.tracer.close()
    own, *children = read(tmp_path / "t.json")
    assert (own["id"], own["model_name"], own["model_version"]) == (1, "fake", engine.info.version)
    assert names(own) == ["REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_END", "ANSWER_SET", "REQUEST_END"]
    ns = [t["ns"] for t in own["timestamps"]]
    assert ns == sorted(ns) and ns[-1] - ns[0] < 5e9
    assert (own["status"], own["exit"], own["layer"], own["stop_reason"]) == ("OK", 1, 5, answer.reason) == ("OK", 1, 5, "max_exit")
    assert (own["budget_ms"], own["budget_met"], own["priority"]) == (500, True, 1)
    # exits 0 and 1, each a child; exit 1 ran on in the same thread call (nobody else queued), so never queued there
    assert [(c["id"], c["parent_id"], c["model_name"], c["exit"]) for c in children] == [(2, 1, "fake.exit0", 0), (3, 1, "fake.exit1", 1)]
    assert names(children[0]) == ["QUEUE_START", "COMPUTE_START", "COMPUTE_END"]
    assert names(children[1]) == ["COMPUTE_START", "COMPUTE_END"]
    assert all((c["batch_size"], c["requests"]) == (1, 1) for c in children)
    stamp = {(c["exit"], t["name"]): t["ns"] for c in children for t in c["timestamps"]}
    assert stamp[0, "QUEUE_START"] == own["timestamps"][1]["ns"]  # the request's queue start is exit 0's
    assert own["timestamps"][2]["ns"] == stamp[0, "COMPUTE_START"] <= stamp[0, "COMPUTE_END"] <= stamp[1, "COMPUTE_START"]
    assert stamp[1, "COMPUTE_END"] == own["timestamps"][3]["ns"]


@in_loop
async def test_one_request_in_rate_is_traced_until_count_runs_out(tmp_path):
    engine = traced_engine(tmp_path / "t.json", rate=3, count=2)
    engine.start()
    for i in range(9):
        await engine.classify(x(i % 4), time.monotonic(), None, None, 0, None)
    assert engine.tracer.settings()["trace_count"] == "0"
    engine.tracer.close()
    traces = [t for t in read(tmp_path / "t.json") if "parent_id" not in t]
    assert len(traces) == 2  # requests 1 and 4; request 7 would be the third, but the count ran out


@in_loop
async def test_log_frequency_writes_every_n_requests_traces_to_numbered_files(tmp_path):
    engine = traced_engine(tmp_path / "t.json", log_frequency=2)
    engine.start()
    for i in range(5):
        await engine.classify(x(i % 4), time.monotonic(), None, None, 0, None)
    engine.tracer.close()  # writes the fifth, and waits for every write
    per_file = [[t["id"] for t in read(tmp_path / f"t.json.{i}") if "parent_id" not in t] for i in range(3)]
    assert [len(ids) for ids in per_file] == [2, 2, 1]
    assert sorted(sum(per_file, [])) == sum(per_file, [])  # in order of their requests
    assert not (tmp_path / "t.json").exists() and not (tmp_path / "t.json.3").exists()


@in_loop
async def test_a_new_log_frequency_goes_on_numbering_the_files_and_a_new_file_starts_again(tmp_path):
    engine = traced_engine(tmp_path / "t.json", log_frequency=1)
    engine.start()

    async def requests(n):
        for i in range(n):
            await engine.classify(x(i % 4), time.monotonic(), None, None, 0, None)

    await requests(2)  # t.json.0, t.json.1
    engine.tracer.update("", {"log_frequency": ["2"]})
    await requests(2)  # t.json.2: not t.json.0 again
    engine.tracer.update("", {"trace_file": ["u.json"]})
    await requests(2)  # u.json.0
    engine.tracer.update("", {"trace_file": ["t.json"]})
    await requests(2)  # t.json.3: a file named again goes on from its last number
    engine.tracer.close()
    requests_in = {f.name: len([t for t in read(f) if "parent_id" not in t]) for f in sorted(tmp_path.iterdir())}
    assert requests_in == {"t.json.0": 1, "t.json.1": 1, "t.json.2": 2, "t.json.3": 2, "u.json.0": 2}


@in_loop
async def test_a_failed_request_is_traced_with_its_status_and_no_compute(tmp_path):
    engine = traced_engine(tmp_path / "t.json")
    engine.start()
    with pytest.raises(DeadlineExceeded):
        await engine.classify(x(1), time.monotonic(), None, None, None, deadline=time.monotonic() - 1)
    engine.tracer.close()
    (own, child) = read(tmp_path / "t.json")
    assert own["status"] == "DEADLINE_EXCEEDED" and own["exit"] is None
    assert names(own) == ["REQUEST_START", "QUEUE_START", "REQUEST_END"]
    assert names(child) == ["QUEUE_START"]  # it waited at exit 0, and nothing ran


@in_loop
async def test_a_refused_request_and_a_cache_hit_are_traced_too(tmp_path):
    engine = make_engine(n=1, delays=[0.05], cfg=EngineConfig(max_batch=8, max_inflight=1, monitor_fraction=0.0,
                                                              response_cache_mb=1))
    engine.tracer = Tracer(TraceSettings(str(tmp_path / "t.json"), "TIMESTAMPS", rate=1))
    engine.start()
    image = x(1)
    first = asyncio.ensure_future(engine.classify(image, time.monotonic(), None, None, None, None))
    await asyncio.sleep(0.01)  # it holds the only slot
    with pytest.raises(QueueFull):
        await engine.classify(x(2), time.monotonic(), None, None, None, None)
    answer = await first
    again = await engine.classify(image, time.monotonic(), None, None, None, None)  # the same image: from the cache
    assert again.exit_index == answer.exit_index
    engine.tracer.close()
    traces = [t for t in read(tmp_path / "t.json") if "parent_id" not in t]
    assert [(t["status"], t.get("cache_hit", False)) for t in traces] == [("RESOURCE_EXHAUSTED", False), ("OK", False),
                                                                         ("OK", True)]
    refused, computed, hit = traces
    assert names(refused) == ["REQUEST_START", "REQUEST_END"] and refused["exit"] is None  # no queue, no compute
    assert names(hit) == ["REQUEST_START", "REQUEST_END"] and (hit["exit"], hit["stop_reason"]) == (0, computed["stop_reason"])
    summary = summarise(read(tmp_path / "t.json"))["fake"]
    assert (summary["requests"], summary["cache_hits"], summary["status"]) == (3, 1, {"RESOURCE_EXHAUSTED": 1, "OK": 2})


def test_tracing_off_or_without_a_file_costs_no_trace(tmp_path):
    assert Tracer(TraceSettings()).sample("m", "v", 0.0, None, 1) is None
    off = Tracer(TraceSettings(str(tmp_path / "t.json"), "OFF", rate=1))
    assert off.sample("m", "v", 0.0, None, 1) is None
    off.update("", {"trace_level": ["TIMESTAMPS"]})
    assert off.sample("m", "v", 0.0, None, 1) is not None


@pytest.mark.parametrize("update, error, says", [
    ({"trace_rate": ["0"]}, InvalidInput, "trace rate 0 must be at least 1"),
    ({"trace_rate": ["often"]}, InvalidInput, "'trace_rate' must be a whole number, at least 1; got 'often'"),
    ({"trace_rate": ["1", "2"]}, InvalidInput, "'trace_rate' takes one value, got 2"),
    ({"trace_count": ["-2"]}, InvalidInput, "trace count -2 must be -1 (no limit)"),
    ({"log_frequency": ["-1"]}, InvalidInput, "log frequency -1 must be 0"),
    ({"trace_level": ["TENSORS"]}, InvalidInput, "TENSORS, inputs and outputs in the trace, is not offered here"),
    ({"trace_level": ["LOUD"]}, InvalidInput, "trace level 'LOUD' unknown; valid: OFF, TIMESTAMPS"),
    ({"trace_file": ["../escape.json"]}, InvalidInput, "must be a bare file name"),
    ({"trace_file": [".hidden"]}, InvalidInput, "must be a bare file name"),
    ({"trace_mode": ["opentelemetry"]}, FailedPrecondition, "trace_mode is triton, set at start-up (--trace-mode)"),
    ({"trace_mode": ["jaeger"]}, InvalidInput, "trace_mode 'jaeger' unknown; valid: triton, opentelemetry"),
    ({"trace_colour": ["red"]}, InvalidInput, "unknown trace setting 'trace_colour'; valid: trace_file, trace_level"),
])
def test_a_bad_setting_is_refused_naming_it_and_changes_nothing(tmp_path, update, error, says):
    tracer = Tracer(TraceSettings(str(tmp_path / "t.json"), "TIMESTAMPS", rate=5))
    before = tracer.settings()
    with pytest.raises(error) as e:
        tracer.update("", {"trace_rate": ["7"], **update})  # a good setting beside the bad one is not applied either
    assert says in str(e.value)
    assert tracer.settings() == before


def test_settings_per_model_copy_the_global_ones_and_clearing_returns_to_them(tmp_path):
    tracer = Tracer(TraceSettings(str(tmp_path / "t.json"), "TIMESTAMPS", rate=5))
    tracer.update("", {"trace_rate": ["50"]})
    assert tracer.update("m", {"trace_count": ["3"]})["trace_rate"] == "50"  # copied from the global settings
    assert tracer.settings("m")["trace_count"] == "3" and tracer.settings()["trace_count"] == "-1"
    assert tracer.update("m", {"trace_file": ["m.json"]})["trace_file"] == str(tmp_path.resolve() / "m.json")
    tracer.update("m", {"trace_count": None, "trace_file": None, "trace_rate": None, "trace_level": None,
                        "log_frequency": None})
    assert "m" not in tracer.models and tracer.settings("m") == tracer.settings()
    assert tracer.update("", {"trace_rate": None})["trace_rate"] == "5"  # the global one returns to its start-up value


def test_an_http_body_becomes_the_grpc_maps_values():
    assert setting_values({"trace_rate": 10, "trace_level": ["TIMESTAMPS"], "trace_count": None}) == \
        {"trace_rate": ["10"], "trace_level": ["TIMESTAMPS"], "trace_count": None}
    with pytest.raises(InvalidInput, match="trace setting 'trace_rate': a string, a list of strings or null"):
        setting_values({"trace_rate": {"n": 1}})
    with pytest.raises(InvalidInput, match="must be a JSON object"):
        setting_values(["trace_rate"])


def test_under_workers_each_worker_has_its_own_file_and_alone_with_reuse_port_settings_are_fixed(tmp_path):
    with pytest.raises(FailedPrecondition, match="started with --reuse-port alone"):
        Tracer(TraceSettings(str(tmp_path / "t.json"), "TIMESTAMPS"), runtime_updates=False).update("", {"trace_rate": ["1"]})
    worker = Tracer(TraceSettings(str(tmp_path / "t.json.worker3"), "TIMESTAMPS"), own_file=True)
    with pytest.raises(FailedPrecondition, match="each worker writes its own file"):
        worker.update("", {"trace_rate": ["1"], "trace_file": ["other.json"]})
    assert worker.settings()["trace_rate"] == "1000"  # nothing changed
    argv = worker_argv(["--repo", "r", "--trace-file", "t.json"], 1, None, None, tmp_path / "p", trace_file="t.json.worker3")
    assert argv[-2:] == ["--trace-file", "t.json.worker3"]  # argparse keeps the last: the worker's own


@pytest.mark.parametrize("flags, says", [
    (["--trace-level", "TIMESTAMPS"], "tracing needs a trace file: start the server with --trace-file PATH"),
    (["--trace-file", "/nonexistent-dir/t.json"], "its folder /nonexistent-dir does not exist or is not writable"),
    (["--trace-file", "t.json", "--trace-rate", "0"], "trace rate 0 must be at least 1"),
])
def test_the_command_refuses_bad_trace_options_before_loading_a_model(flags, says):
    out = subprocess.run([sys.executable, "-m", "server", "--repo", "nowhere", *flags], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and says in out.stderr


def wait_for(path, timeout_s=10.0):
    end = time.monotonic() + timeout_s
    while not path.exists() and time.monotonic() < end:
        time.sleep(0.02)
    return read(path)


def flat(response, module) -> dict[str, list[str]]:
    """Trace settings as name -> values, from gRPC's JSON ({"settings": {name: {"value": [...]}}}) or HTTP's."""
    if module is tgrpc:
        return {k: v.get("value", []) for k, v in response["settings"].items()}
    return {k: v if isinstance(v, list) else [v] for k, v in response.items()}


@pytest.mark.parametrize("module", [tgrpc, thttp], ids=["grpc", "http"])
def test_tritons_clients_turn_tracing_on_and_read_the_traces(tiny_repo, tmp_path, module):
    startup = TraceSettings(str(tmp_path / "trace.json"), "OFF")
    with v2_server(tiny_repo, trace=startup) as (app, target, url):
        c = module.InferenceServerClient(target if module is tgrpc else url)
        kw = {"as_json": True} if module is tgrpc else {}
        assert flat(c.get_trace_settings(**kw), module) == {
            "trace_file": [str(tmp_path / "trace.json")], "trace_level": ["OFF"], "trace_rate": ["1000"],
            "trace_count": ["-1"], "log_frequency": ["0"], "trace_mode": ["triton"]}
        now = flat(c.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "log_frequency": "1"}, **kw),
                   module)
        assert (now["trace_level"], now["trace_rate"], now["log_frequency"]) == (["TIMESTAMPS"], ["1"], ["1"])
        with Client(target) as client:
            client.classify(png(images(1)[0]))
        own, *children = wait_for(tmp_path / "trace.json.0")
        assert own["model_name"] == MODEL and own["status"] == "OK" and len(children) == own["exit"] + 1
        assert "trace" in c.get_server_metadata(**kw)["extensions"]
        model = flat(c.update_trace_settings(model_name=MODEL, settings={"trace_rate": "4"}, **kw), module)
        assert model["trace_rate"] == ["4"] and model["trace_level"] == ["TIMESTAMPS"]  # the rest copied from global
        assert flat(c.get_trace_settings(model_name=MODEL, **kw), module) == model
        assert app.tracer.settings()["trace_rate"] == "1"
        for bad, says in [({"trace_file": "/etc/passwd"}, "must be a bare file name"), ({"trace_level": "TENSORS"}, "is not offered here")]:
            with pytest.raises(InferenceServerException) as e:
                c.update_trace_settings(settings=bad)
            assert says in e.value.message() and e.value.status() in ("StatusCode.INVALID_ARGUMENT", "400")
        with pytest.raises(InferenceServerException) as e:
            c.update_trace_settings(model_name="nope", settings={"trace_rate": "1"})
        assert "model 'nope' is not loaded" in e.value.message()
    assert app.tracer.files == {}  # shut down: written and closed


def test_the_summary_adds_up_by_hand():
    ms = 1_000_000
    ours = [{"id": 1, "model_name": "m", "status": "OK", "stop_reason": "confidence", "budget_ms": 5, "budget_met": True,
             "timestamps": [{"name": "REQUEST_START", "ns": 0}, {"name": "QUEUE_START", "ns": 1 * ms},
                            {"name": "COMPUTE_START", "ns": 3 * ms}, {"name": "COMPUTE_END", "ns": 7 * ms},
                            {"name": "REQUEST_END", "ns": 8 * ms}]},
            {"id": 2, "parent_id": 1, "model_name": "m.exit0", "exit": 0, "batch_size": 4, "timestamps": [
                {"name": "QUEUE_START", "ns": 1 * ms}, {"name": "COMPUTE_START", "ns": 3 * ms}, {"name": "COMPUTE_END", "ns": 4 * ms}]},
            {"id": 3, "parent_id": 1, "model_name": "m.exit1", "exit": 1, "batch_size": 2, "timestamps": [
                {"name": "COMPUTE_START", "ns": 4 * ms}, {"name": "COMPUTE_END", "ns": 7 * ms}]}]
    # Triton's own layout: the model and the timestamps of one id in two objects
    triton = [{"id": 9, "model_name": "simple", "model_version": 1},
              {"id": 9, "timestamps": [{"name": "REQUEST_START", "ns": 0}, {"name": "QUEUE_START", "ns": ms},
                                       {"name": "COMPUTE_START", "ns": 2 * ms}, {"name": "COMPUTE_END", "ns": 4 * ms},
                                       {"name": "REQUEST_END", "ns": 5 * ms}]}]
    s = summarise(ours + triton)
    m = s["m"]
    assert (m["requests"], m["status"], m["stop_reason"], m["budget"]) == (1, {"OK": 1}, {"confidence": 1}, {"met": 1})
    assert {k: v["p50"] for k, v in m["phases_ms"].items()} == {"before queue": 1.0, "wait at exit 0": 2.0,
                                                               "compute, all exits": 4.0, "answer after compute": 1.0,
                                                               "request": 8.0}
    e0, e1 = m["exits"][0], m["exits"][1]
    assert (e0["reached"], e0["queued"], e0["wait_ms"]["p50"], e0["compute_ms"]["p50"], e0["mean_rows"]) == (1, 1, 2.0, 1.0, 4.0)
    assert (e1["reached"], e1["queued"], e1["wait_ms"], e1["compute_ms"]["max"], e1["mean_rows"]) == (1, 0, {"n": 0}, 3.0, 2.0)
    simple = s["simple"]
    assert simple["exits"][0]["compute_ms"]["p50"] == 2.0 and simple["phases_ms"]["request"]["p50"] == 5.0
    assert "exit 1: reached by 1, queued 0, mean rows per run 2.0" in render(s)
