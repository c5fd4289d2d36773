"""Loads while serving are refused where they would leave the server too little memory (server/load_memory.py):
what is available read from /proc/meminfo and cgroup v1 and v2 trees as the kernel writes them; the refusal
(RESOURCE_EXHAUSTED, HTTP 507) names the figures, the model loaded before serves on, a poll's new version is
refused the same way; start-up loads are not checked."""

import json
import math
import shutil
import time
from pathlib import Path

import pytest
import tritonclient.grpc as tgrpc

from server import load_memory
from server.errors import InsufficientMemory
from server.load_memory import Available, available, needed
from tests.server.conftest import running_server
from tests.server.helpers import wait_for
from tests.server.test_model_control import MODEL, copy_repo, index, refused
from tests.server.test_model_upload import model_files, staged
from tests.server.v2_helpers import error_of, http

GB = 2**30
MEMINFO = "MemTotal:       32000000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\nBuffers:  1 kB\n"


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_host_figure_alone_where_no_cgroup_limits(tmp_path):
    write(tmp_path, {"proc/meminfo": MEMINFO, "proc/self/cgroup": "0::/\n"})
    (tmp_path / "cg").mkdir()  # a cgroup v2 root: no memory.max there
    assert available(tmp_path / "proc", tmp_path / "cg") == Available(20000000 * 1024, "the host's MemAvailable")


def test_cgroup_v2_in_its_own_namespace_counts_the_working_set(tmp_path):
    write(tmp_path, {"proc/meminfo": MEMINFO, "proc/self/cgroup": "0::/\n",
                     "cg/memory.max": f"{GB}\n", "cg/memory.current": "900000000\n",
                     "cg/memory.stat": "anon 700000000\nfile 200000000\ninactive_file 100000000\nactive_file 100000000\n"})
    got = available(tmp_path / "proc", tmp_path / "cg")
    assert got.bytes == GB - (900000000 - 100000000)  # the inactive file cache is reclaimed before an OOM kill
    assert got.source == f"the memory limit of cgroup v2 {tmp_path / 'cg'} less its working set"


def test_cgroup_v2_a_parents_limit_binds_where_the_own_is_max(tmp_path):
    pod, container = "cg/kubepods/pod1", "cg/kubepods/pod1/c1"
    write(tmp_path, {"proc/meminfo": MEMINFO, "proc/self/cgroup": "0::/kubepods/pod1/c1\n",
                     f"{container}/memory.max": "max\n", f"{container}/memory.current": "300000000\n",
                     f"{container}/memory.stat": "inactive_file 0\n",
                     f"{pod}/memory.max": "536870912\n", f"{pod}/memory.current": "400000000\n",
                     f"{pod}/memory.stat": "inactive_file 0\n"})
    got = available(tmp_path / "proc", tmp_path / "cg")
    assert got.bytes == 536870912 - 400000000 and str(tmp_path / pod) in got.source


def test_cgroup_v1_and_its_unlimited_value(tmp_path):
    write(tmp_path, {"proc/meminfo": MEMINFO,
                     "proc/self/cgroup": "9:name=systemd:/\n4:memory:/docker/abc\n3:cpuset:/\n0::/\n",
                     "cg/memory/docker/abc/memory.limit_in_bytes": f"{2 * GB}\n",
                     "cg/memory/docker/abc/memory.usage_in_bytes": f"{3 * GB // 2}\n",
                     "cg/memory/docker/abc/memory.stat": f"cache 1\ninactive_file 5\ntotal_inactive_file {GB // 2}\n",
                     "cg/memory/docker/memory.limit_in_bytes": "9223372036854771712\n",  # v1's "no limit"
                     "cg/memory/docker/memory.usage_in_bytes": "1\n", "cg/memory/docker/memory.stat": "\n"})
    got = available(tmp_path / "proc", tmp_path / "cg")
    assert got.bytes == 2 * GB - (3 * GB // 2 - GB // 2) and "cgroup v1" in got.source


def test_nothing_readable_means_no_figure(tmp_path):
    assert available(tmp_path / "no-proc", tmp_path / "no-cgroup") is None


def test_the_estimate_from_exports_figures_by_hand(tiny_repo, tmp_path):
    """Per session: 1 MB, twice its weights, 3.5x its activations per image times the batch cap (RESULTS §61's
    measurements, covered); with static batches every bucket's images; 8 MB a load besides."""
    folder = (tiny_repo / MODEL).resolve()
    parts = [e["memory"] for e in json.loads((folder / "manifest.json").read_text())["exits"]]
    assert len(parts) == 2 and all(p["activation_bytes_per_image"] > 0 and p["weight_bytes"] > 0 for p in parts)
    by_hand = lambda images: int(sum(2**20 + 2 * p["weight_bytes"] + 3.5 * p["activation_bytes_per_image"] * images  # noqa: E731
                                     for p in parts)) + 8 * 2**20
    assert needed(folder, 32) == by_hand(32) and needed(folder, 8) == by_hand(8)
    assert needed(folder, 32, static_batches=True) == by_hand(1 + 2 + 4 + 8 + 16 + 32)
    assert needed(folder, 24, static_batches=True) == by_hand(1 + 2 + 4 + 8 + 16 + 24)
    # a manifest without the figures (an older export, or by hand): 16x the ONNX files' bytes and the fixed part
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    manifest = json.loads((old / "manifest.json").read_text())
    for e in manifest["exits"]:
        del e["memory"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert needed(old, 32) == 16 * sum(f.stat().st_size for f in old.glob("*.onnx")) + 8 * 2**20
    for e in manifest["exits"]:
        e["memory"] = {"weight_bytes": 10, "activation_bytes_per_image": 20}
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert load_memory.manifest_memory(old) == [(10, 20), (10, 20)]
    for bad in (-1, "12", 2.5, True, None, 2**60):  # a figure that is not a byte count is no figure
        manifest["exits"][0]["memory"]["activation_bytes_per_image"] = bad
        (old / "manifest.json").write_text(json.dumps(manifest))
        assert load_memory.manifest_memory(old) is None


def test_the_refusal_names_the_figures(tiny_repo, monkeypatch):
    folder = (tiny_repo / MODEL).resolve()
    monkeypatch.setattr(load_memory, "available", lambda: Available(needed(folder) + 100 * 2**20, "a test's figure"))
    load_memory.check(MODEL, folder, 100 * 2**20)  # exactly the floor left: loads
    with pytest.raises(InsufficientMemory) as e:
        load_memory.check(MODEL, folder, 100 * 2**20 + 1)
    need, room = needed(folder) / 2**20, (needed(folder) + 100 * 2**20) / 2**20
    assert str(e.value) == (f"load of model 'tiny' refused: it needs ~{need:.0f} MB of memory (estimated from its export's "
                            f"figures at batch cap 32), {room:.0f} MB is available (a test's figure), and a load leaves at "
                            "least 100 MB (--load-memory-floor-mb); unload a model or give the server more memory")
    load_memory.check(MODEL, folder, None)  # the check off
    # under --workers the first worker judges every worker's copy: the others load side by side after it
    monkeypatch.setattr(load_memory, "available", lambda: Available(3 * needed(folder) + 100 * 2**20, "a test's figure"))
    load_memory.check(MODEL, folder, 100 * 2**20, copies=3)
    with pytest.raises(InsufficientMemory, match=rf"it needs ~{4 * needed(folder) / 2**20:.0f} MB of memory \(4 worker "
                                                 r"processes, a copy each\)"):
        load_memory.check(MODEL, folder, 100 * 2**20, copies=4)


def test_live_workers_counts_the_workers_that_joined_and_run(tmp_path):
    import os
    import subprocess
    from types import SimpleNamespace

    from server.worker_sync import WorkerSync

    gone = subprocess.Popen(["true"])
    gone.wait()
    for pid in (os.getpid(), os.getppid(), gone.pid):
        (tmp_path / f"applied-{pid}.json").write_text('{"generation": 1, "failures": {}}')
    assert WorkerSync.live_workers(SimpleNamespace(folder=tmp_path)) == 2  # a dead worker's file is not a worker
    assert WorkerSync.live_workers(SimpleNamespace(folder=tmp_path / "none")) == 1  # this process, at least


def test_a_load_past_the_memory_is_refused_and_what_serves_serves_on(tiny_repo, tmp_path, monkeypatch):
    repo = copy_repo(tiny_repo, tmp_path)
    config, files = model_files(repo)
    with running_server(repo, model_control="explicit", http_port=0) as (app, target):
        c = tgrpc.InferenceServerClient(target)
        c.load_model(MODEL)  # room enough
        serving = app.engines[MODEL]
        monkeypatch.setattr(load_memory, "available", lambda: Available(200 * 2**20, "a test's figure"))
        status, message = refused(lambda: c.load_model("upload", config=config, files=files))
        assert status == "StatusCode.RESOURCE_EXHAUSTED" and message.startswith("load of model 'upload' refused: it needs ~")
        assert "200 MB is available (a test's figure)" in message and "upload" not in app.engines
        assert "upload" not in {m["name"] for m in index(c, tgrpc)} and staged(app) == []  # its files went too

        status, message = refused(lambda: c.load_model(MODEL, config=config, files=files))  # a new version of one serving
        assert status == "StatusCode.RESOURCE_EXHAUSTED" and message.endswith(f"; still serving version {serving.info.version}")
        assert app.engines[MODEL] is serving and not serving.stopped
        status, text = error_of(http(f"http://127.0.0.1:{app.http_port}/v2/repository/models/{MODEL}/load", "POST",
                                     {"parameters": {"config": config}}))
        assert status == 507 and text.startswith(f"load of model '{MODEL}' refused: it needs ~")  # as a full quota
        assert app.engines[MODEL] is serving

        monkeypatch.setattr(load_memory, "available", lambda: Available(64 * 2**30, "a test's figure"))
        c.load_model("upload", config=config, files=files)  # memory again: it loads
        assert "upload" in app.engines


def test_a_polled_new_version_past_the_memory_is_refused_and_loads_once_there_is_room(tiny_run, tiny_repo, tmp_path,
                                                                                      monkeypatch, caplog):
    from export.build import export_model

    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo, symlinks=True)
    with running_server(repo, poll_s=0.2) as (app, target):  # start-up is not checked
        old = app.engines[MODEL]
        monkeypatch.setattr(load_memory, "available", lambda: Available(10 * 2**20, "a test's figure"))
        with caplog.at_level("ERROR", logger="auxnet.server"):
            export_model(str(tiny_run), str(repo), MODEL, measure=False, log=lambda *a: None)  # a new version
            assert wait_for(lambda: any("refusing new version" in r.getMessage() for r in caplog.records), 15)
            time.sleep(1.0)  # five more polls: tried again, not logged again
        lines = [r.getMessage() for r in caplog.records if "refusing new version" in r.getMessage()]
        assert len(lines) == 1 and "10 MB is available (a test's figure)" in lines[0]
        assert f"still serving {old.info.version}; tried again at every poll" in lines[0]
        assert app.engines[MODEL] is old
        monkeypatch.setattr(load_memory, "available", lambda: Available(64 * 2**30, "a test's figure"))
        assert wait_for(lambda: app.engines[MODEL] is not old, 15)  # the same version, once there is room
        assert app.engines[MODEL].info.path == (repo / MODEL).resolve()


def test_start_up_says_when_no_reload_would_fit(tiny_repo, monkeypatch, caplog):
    from server.app import ServerApp, ServerConfig

    need = needed((tiny_repo / MODEL).resolve(), 32)
    room = [need + 256 * 2**20]  # exactly the default floor left after a reload: it would load
    monkeypatch.setattr(load_memory, "available", lambda: Available(room[0], "a test's figure"))
    app = ServerApp(ServerConfig(repo=str(tiny_repo), port=0, metrics_port=None, http_port=None))
    app.load_models()
    assert MODEL in app.engines and app.engines[MODEL].memory_estimate == need
    assert "will be refused" not in caplog.text
    room[0] -= 1  # a byte less: a reload would be refused, so start-up says so (and still loads)
    app = ServerApp(ServerConfig(repo=str(tiny_repo), port=0, metrics_port=None, http_port=None))
    app.load_models()
    assert MODEL in app.engines
    assert (f"(a test's figure): a new version of the largest model loaded (~{need / 2**20:.0f} MB estimated) would "
            "leave less than --load-memory-floor-mb 256 MB, so reloads and loads while serving will be refused until "
            "there is more memory") in caplog.text


def test_memory_goes_back_after_refused_loads_with_files(tiny_repo, tmp_path, monkeypatch):
    """Refused loads with files, retried, grew resident memory until the kernel killed the server (RESULTS §61):
    after each burst the freed pages are given back, one release at a time; a refused load without files needs none."""
    from server import model_control

    releases = []
    monkeypatch.setattr(model_control, "release_freed_memory", lambda: releases.append(time.monotonic()))
    repo = copy_repo(tiny_repo, tmp_path)
    config, files = model_files(repo)
    with running_server(repo, model_control="explicit", http_port=0) as (app, target):
        c = tgrpc.InferenceServerClient(target)
        monkeypatch.setattr(load_memory, "available", lambda: Available(1, "a test's figure"))
        refused(lambda: c.load_model(MODEL))  # the repository's files: nothing came in the request
        time.sleep(3 * model_control.RELEASE_DELAY_S)
        assert releases == []
        sent = []
        for _ in range(5):
            sent.append(time.monotonic())
            status, _ = refused(lambda: c.load_model("upload", config=config, files=files))
            assert status == "StatusCode.RESOURCE_EXHAUSTED"
        assert wait_for(lambda: app.control._release_task is None and releases and releases[-1] > sent[-1], 10)
        assert 1 <= len(releases) <= 5  # the burst's refusals share releases


def test_figures_the_files_contradict_are_refused_by_name(tiny_repo, tmp_path):
    """An upload's manifest is the client's: figures that would let a load through that does not fit are refused."""
    from server.repository import RepositoryError, load_manifest

    folder = tmp_path / MODEL
    shutil.copytree(tiny_repo / MODEL, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    size = (folder / manifest["exits"][0]["onnx"]).stat().st_size
    features = 4 * math.prod(manifest["exits"][0]["feature_shape"])
    for field, value, rule in (("weight_bytes", 0, f"between half and all of exit_0.onnx's {size} bytes"),
                               ("weight_bytes", size + 1, f"between half and all of exit_0.onnx's {size} bytes"),
                               ("activation_bytes_per_image", features - 1,
                                f"at least the {features} bytes of the features it hands on")):
        bad = json.loads(json.dumps(manifest))
        bad["exits"][0]["memory"][field] = value
        (folder / "manifest.json").write_text(json.dumps(bad))
        with pytest.raises(RepositoryError) as e:
            load_manifest(folder)
        assert str(e.value) == f"{folder / 'manifest.json'}: exits[0].memory.{field} must be {rule}; got {value}"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert load_manifest(folder).exits[0].raw["memory"] == manifest["exits"][0]["memory"]
