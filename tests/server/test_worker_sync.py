"""Under `--workers N` (server/worker_sync.py) a model load or unload (explicit mode), a shared memory registration
and a change of log or trace settings reach every worker process before the call returns, and a worker started later (a
killed one's replacement) serves what the others serve. Each check below opens a new connection per request
(urllib sends `Connection: close`), so the kernel spreads them over both workers: 16 requests all reaching one
worker of two happens once in 2^15 runs."""

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
import tritonclient.utils.shared_memory as shm

from tests.server.helpers import images
from tests.server.test_workers import start_workers

MODEL = "tiny"
PIXELS = np.stack(images(1)).astype(np.uint8)  # (1, 32, 32, 3)
SPREAD = 16


def call(url: str, body: dict | None = None) -> tuple[int, dict | list]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def infer_body(region: str | None = None) -> dict:
    tensor = {"name": "pixels", "datatype": "UINT8", "shape": list(PIXELS.shape)}
    if region is None:
        tensor["data"] = PIXELS.flatten().tolist()
    else:
        tensor["parameters"] = {"shared_memory_region": region, "shared_memory_byte_size": PIXELS.nbytes}
    return {"inputs": [tensor], "outputs": [{"name": "label"}]}


def spread(url: str, body: dict | None = None) -> list[tuple[int, dict | list]]:
    return [call(url, body) for _ in range(SPREAD)]


def replace_a_worker(proc, pids: list[int]) -> None:
    """Kill one worker outright and wait until the supervisor's replacement serves."""
    os.kill(pids[0], signal.SIGKILL)
    deadline = time.time() + 60
    while time.time() < deadline:
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        if len(children) == 2 and str(pids[0]) not in children:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the killed worker was not replaced")


def stop(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0


@pytest.mark.slow
def test_a_load_and_an_unload_reach_every_worker_and_a_replacement_serves_what_they_serve(tiny_repo):
    proc, _, _, _, http_port, pids, port_file = start_workers(tiny_repo, "--model-control-mode", "explicit")
    base = f"http://127.0.0.1:{http_port}/v2"
    try:
        assert {code for code, _ in spread(f"{base}/models/{MODEL}/infer", infer_body())} == {404}  # none at start

        assert call(f"{base}/repository/models/{MODEL}/load", {}) == (200, {})
        answers = spread(f"{base}/models/{MODEL}/infer", infer_body())
        assert [code for code, _ in answers] == [200] * SPREAD, answers[:3]
        for code, index in spread(f"{base}/repository/index", {}):
            assert code == 200 and [(m["name"], m["state"]) for m in index] == [(MODEL, "READY")]

        port_file_pids = [int(v) for v in port_file.read_text().split()[4:]]
        replace_a_worker(proc, port_file_pids)
        answers = spread(f"{base}/models/{MODEL}/infer", infer_body())  # the replacement loaded it at start
        assert [code for code, _ in answers] == [200] * SPREAD, answers[:3]

        assert call(f"{base}/repository/models/{MODEL}/unload", {}) == (200, {})
        answers = spread(f"{base}/models/{MODEL}/infer", infer_body())
        assert [code for code, _ in answers] == [404] * SPREAD, answers[:3]
        assert all("not loaded" in doc["error"] for _, doc in answers), answers[0]

        code, doc = call(f"{base}/repository/models/nothing-here/load", {})  # refused here, nothing shared
        assert code == 404 and "'nothing-here' is not in the repository" in doc["error"]
        code, doc = call(f"{base}/repository/models/{MODEL}/load", {})
        assert code == 200 and {c for c, _ in spread(f"{base}/models/{MODEL}/infer", infer_body())} == {200}
    finally:
        stop(proc)


@pytest.mark.slow
def test_a_region_and_log_and_trace_settings_reach_every_worker(tiny_repo, tmp_path):
    key = f"/auxnet-test-{uuid.uuid4().hex[:12]}"
    handle = shm.create_shared_memory_region(key.strip("/"), key, PIXELS.nbytes)
    shm.set_shared_memory_region(handle, [PIXELS])
    proc, _, _, _, http_port, pids, _ = start_workers(tiny_repo, "--allow-client-shm", "--trace-file",
                                                      str(tmp_path / "t.json"))
    base = f"http://127.0.0.1:{http_port}/v2"
    try:
        plain = call(f"{base}/models/{MODEL}/infer", infer_body())
        assert plain[0] == 200
        assert call(f"{base}/systemsharedmemory/region/in/register", {"key": key, "byte_size": PIXELS.nbytes}) == (200, {})
        answers = spread(f"{base}/models/{MODEL}/infer", infer_body("in"))
        assert all(a == plain for a in answers), answers[:3]  # every worker reads the region: the same answer
        for code, status in spread(f"{base}/systemsharedmemory/status"):
            assert code == 200 and [r["name"] for r in status] == ["in"]
        code, doc = call(f"{base}/systemsharedmemory/region/in/register", {"key": key, "byte_size": 1})
        assert code == 400 and "'in' is registered already" in doc["error"]

        assert call(f"{base}/systemsharedmemory/region/in/unregister", {}) == (200, {})
        answers = spread(f"{base}/models/{MODEL}/infer", infer_body("in"))
        assert [code for code, _ in answers] == [400] * SPREAD
        assert all("region 'in' is not registered" in doc["error"] for _, doc in answers), answers[0]

        code, settings = call(f"{base}/logging", {"log_info": False, "log_format": "ISO8601"})
        assert code == 200 and settings["log_info"] is False
        for code, now in spread(f"{base}/logging"):
            assert code == 200 and (now["log_info"], now["log_format"]) == (False, "ISO8601")
        code, doc = call(f"{base}/logging", {"log_info": "no"})  # checked here; nothing shared
        assert code == 400 and "must be a boolean" in doc["error"]

        code, now = call(f"{base}/trace/setting", {"trace_level": "TIMESTAMPS", "trace_rate": "1"})
        assert code == 200 and now["trace_rate"] == "1"
        code, now = call(f"{base}/models/{MODEL}/trace/setting", {"trace_count": "5"})
        assert code == 200 and now["trace_count"] == "5"
        files = set()
        for code, now in spread(f"{base}/models/{MODEL}/trace/setting"):
            assert code == 200 and (now["trace_level"], now["trace_rate"], now["trace_count"]) == (["TIMESTAMPS"], "1", "5")
            files.add(now["trace_file"])
        assert files == {str(tmp_path / "t.json.worker0"), str(tmp_path / "t.json.worker1")}  # both asked, each its own
        code, doc = call(f"{base}/trace/setting", {"trace_file": "other.json"})
        assert code == 400 and "each worker writes its own file" in doc["error"]

        counted_from = time.monotonic_ns()  # traces' clock (CLOCK_MONOTONIC); each worker traced its first request before
        # trace_count 5 is 5 traces from the workers together (server/trace_count.py), not 5 from each
        assert all(code == 200 for code, _ in spread(f"{base}/models/{MODEL}/infer", infer_body()))
        for code, now in spread(f"{base}/models/{MODEL}/trace/setting"):
            assert code == 200 and now["trace_count"] == "0"
    finally:
        stop(proc)
        shm.destroy_shared_memory_region(handle)
    traced = [t for w in (0, 1) if (tmp_path / f"t.json.worker{w}").exists()
              for t in json.loads((tmp_path / f"t.json.worker{w}").read_text())
              if "parent_id" not in t and t["timestamps"][0]["ns"] > counted_from]
    assert len(traced) == 5 and {t["model_name"] for t in traced} == {MODEL}


class _App:
    """What WorkerSync reads of a ServerApp when no model is shared: regions, log settings, the grace period."""

    def __init__(self):
        from types import SimpleNamespace

        from server.log_settings import LogControl
        from server.metrics import Metrics
        from server.shared_memory import SharedMemoryRegistry

        self.cfg = SimpleNamespace(grace_s=0.0)
        self.engines = {}
        self.shared_memory = SharedMemoryRegistry(allowed=True)
        self.log_control = LogControl("INFO")
        self.tracer = None
        self.metrics = Metrics()


@pytest.fixture
def other_worker():
    """A live process standing in for a sibling worker: its applied file is written by the test."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


def write_applied(folder, pid: int, generation: int, failures: dict) -> None:
    (folder / f"applied-{pid}.json").write_text(json.dumps({"generation": generation, "failures": failures}))


def test_a_call_fails_naming_the_worker_that_could_not_apply_it_and_why(tmp_path, other_worker):
    import asyncio

    from server.errors import NotServing
    from server.worker_sync import WorkerSync

    sync = WorkerSync(_App(), tmp_path)

    async def change():
        sync.join()
        write_applied(tmp_path, other_worker, 1, {"log": "disk full"})
        await sync.publish(lambda state: state.update(log={"log_info": False}), "log", "the log settings' change")

    with pytest.raises(NotServing, match=rf"worker pid {other_worker}: disk full"):
        asyncio.run(change())
    assert sync.app.log_control.values["log_info"] is False  # applied here: the call says so ("took effect here")
    assert json.loads((tmp_path / f"applied-{os.getpid()}.json").read_text())["generation"] == 1


def test_a_worker_that_does_not_catch_up_is_named_when_the_wait_ends_and_a_dead_one_is_not_waited_for(
        tmp_path, other_worker, monkeypatch):
    import asyncio

    from server import worker_sync
    from server.errors import NotServing

    monkeypatch.setattr(worker_sync, "WAIT_MARGIN_S", 0.3)
    sync = worker_sync.WorkerSync(_App(), tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()

    async def changes():
        sync.join()
        write_applied(tmp_path, dead.pid, -1, {})  # a crashed worker's file: ignored
        await sync.publish(lambda state: state.update(log={"log_info": False}), "log", "change")
        write_applied(tmp_path, other_worker, 0, {})  # alive, and stays behind
        with pytest.raises(NotServing, match=rf"worker process\(es\) \[{other_worker}\] had not applied it after 0.3 s"):
            await sync.publish(lambda state: state.update(log={"log_info": True}), "log", "change")
        sync.leave()

    asyncio.run(changes())
    assert not (tmp_path / f"applied-{os.getpid()}.json").exists() and not list(tmp_path.glob("poke-*"))


def test_trace_settings_adopted_from_another_worker_keep_this_workers_file(tmp_path):
    from server.tracing import Tracer, TraceSettings

    here = Tracer(TraceSettings(str(tmp_path / "t.json.worker0")), own_file=True)
    there = Tracer(TraceSettings(str(tmp_path / "t.json.worker1")), own_file=True)
    here.update("", {"trace_level": ["TIMESTAMPS"], "trace_rate": ["7"]})
    here.update("m", {"trace_count": ["3"], "log_frequency": ["2"]})
    there.adopt(here.shared())
    for model in ("", "m"):
        mine, theirs = here.settings(model), there.settings(model)
        assert theirs["trace_file"] == str(tmp_path / "t.json.worker1")
        assert {k: v for k, v in theirs.items() if k != "trace_file"} == {k: v for k, v in mine.items() if k != "trace_file"}
    assert there.settings("m")["trace_count"] == "3" and there.settings("m")["log_frequency"] == "2"
    here.update("m", {"trace_count": None, "log_frequency": None, "trace_level": None, "trace_rate": None})
    there.adopt(here.shared())
    assert "m" not in there.models and there.settings("m")["trace_rate"] == "7"  # m follows the global settings again
    here.close()
    there.close()


def test_another_change_does_not_start_a_trace_count_again(tmp_path):
    import asyncio

    from server.tracing import Tracer, TraceSettings
    from server.worker_sync import WorkerSync

    app = _App()
    app.tracer = Tracer(TraceSettings(str(tmp_path / "t.json.worker0")), own_file=True)
    sync = WorkerSync(app, tmp_path)

    async def changes():
        sync.join()
        app.tracer.update("", {"trace_level": ["TIMESTAMPS"], "trace_rate": ["1"], "trace_count": ["2"]})
        await sync.publish(lambda state: state.update(trace=app.tracer.shared()), "trace", "change")
        assert app.tracer.sample("m", "v", 0.0, None, 1) is not None  # one of the two traces taken
        await sync.publish(lambda state: state.update(log={"log_info": False}), "log", "change")

    asyncio.run(changes())
    assert app.tracer.settings()["trace_count"] == "1"  # not 2 again
    app.tracer.close()


def test_a_folder_too_deep_for_a_socket_path_still_shares_changes(tmp_path):
    import asyncio

    from server.worker_sync import WorkerSync

    folder = tmp_path / ("d" * 120)  # a poke socket's path would pass AF_UNIX's 107 bytes
    folder.mkdir()
    sync = WorkerSync(_App(), folder)

    async def change():
        sync.join()  # was "AF_UNIX path too long", and the worker refused to start
        assert sync._poke_socket is None
        await sync.publish(lambda state: state.update(log={"log_info": False}), "log", "change")
        sync.leave()

    asyncio.run(change())
    assert sync.app.log_control.values["log_info"] is False


@pytest.mark.slow
def test_concurrent_changes_through_different_workers_end_the_same_everywhere(tiny_repo):
    """Four clients register and unregister regions of their own at once, each call on a new connection (so on
    either worker), beside log setting changes: every change goes through the shared state's lock, and at the end
    every worker holds exactly the regions the calls left (none lost to a race between two workers' edits)."""
    import threading

    keys = [f"/auxnet-test-{uuid.uuid4().hex[:12]}" for _ in range(4)]
    handles = [shm.create_shared_memory_region(k.strip("/"), k, 64) for k in keys]
    proc, _, _, _, http_port, _, _ = start_workers(tiny_repo, "--allow-client-shm")
    base = f"http://127.0.0.1:{http_port}/v2"
    failures = []

    def churn(i: int) -> None:
        for n in range(12):
            for path, body in ((f"region/c{i}/register", {"key": keys[i], "byte_size": 64}), (f"region/c{i}/unregister", {})):
                if n == 11 and "unregister" in path and i % 2:  # clients 1 and 3 leave their region registered
                    continue
                code, doc = call(f"{base}/systemsharedmemory/{path}", body)
                if code != 200:
                    failures.append((i, n, path, code, doc))
            call(f"{base}/logging", {"log_verbose_level": n % 2})

    try:
        threads = [threading.Thread(target=churn, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert failures == []
        for code, status in spread(f"{base}/systemsharedmemory/status"):
            assert code == 200 and sorted(r["name"] for r in status) == ["c1", "c3"]
        assert {now["log_verbose_level"] for _, now in spread(f"{base}/logging")} == {1}
    finally:
        stop(proc)
        for h in handles:
            shm.destroy_shared_memory_region(h)


def test_a_change_this_worker_cannot_apply_is_reported_counted_and_logged(tmp_path, caplog):
    import asyncio

    from server.worker_sync import WorkerSync

    sync = WorkerSync(_App(), tmp_path)
    missing = {"key": f"/auxnet-missing-{uuid.uuid4().hex[:8]}", "offset": 0, "byte_size": 8}

    async def change():
        sync.join()
        sync.change(lambda state: state["shm"].update(r=missing))  # as another worker would have shared it
        await sync.converge()
        sync.leave()

    asyncio.run(change())
    assert sync.app.metrics.registry.get_sample_value("auxnet_shared_change_failures_total", {"kind": "shm"}) == 1
    assert "cannot apply the shared shm r: shared memory region 'r': no shared memory object" in caplog.text
    assert sync.applied == 1 and "r" not in sync.app.shared_memory.regions
