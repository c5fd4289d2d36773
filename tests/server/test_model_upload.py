"""Triton's load with an override (server/model_upload.py): a model's files and manifest sent in the load request,
through Triton's own clients (gRPC bytes, HTTP base64), loaded from a staging folder that goes when the version is
replaced or unloaded; a manifest alone over the repository's files; cut-short files, bad names and bad configs
refused by name before anything changes; under --workers every worker, a restarted one too, serves the upload."""

import base64
import errno
import json
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server import model_upload
from server.errors import InsufficientStorage
from server.model_upload import FILE_PREFIX, LOCK_FILE
from tests.server.test_model_control import client, copy_repo, index, refused
from tests.server.test_worker_sync import call, infer_body, replace_a_worker, spread, stop
from tests.server.test_workers import start_workers
from tests.server.v2_helpers import error_of, http, v2_server

MODEL = "tiny"
PIXELS = (np.arange(32 * 32 * 3).reshape(1, 32, 32, 3) * 7 % 256).astype(np.uint8)


def model_files(repo: Path, name: str = MODEL) -> tuple[str, dict[str, bytes]]:
    """(manifest text, {"file:NAME": bytes}) of a model folder: what a deployer sends."""
    folder = (repo / name).resolve()
    files = {f"file:{f.name}": f.read_bytes() for f in folder.iterdir() if f.is_file() and f.name != "manifest.json"}
    return (folder / "manifest.json").read_text(), files


def scores(c, module, name: str) -> np.ndarray:
    inp = module.InferInput("pixels", list(PIXELS.shape), "UINT8")
    inp.set_data_from_numpy(PIXELS)
    return c.infer(name, [inp], outputs=[module.InferRequestedOutput("probabilities")]).as_numpy("probabilities")


def staged(app) -> list[str]:
    """The staging folder's entries but its lock file: the versions staged (and any half-written one)."""
    root = app.control._staging
    return folders(root) if root is not None and root.exists() else []


def folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name != LOCK_FILE)


@pytest.mark.parametrize("module", [tgrpc, thttp], ids=["grpc", "http"])
def test_a_model_sent_in_the_load_request_serves_as_the_repository_copy_and_its_files_go_at_unload(tiny_repo, tmp_path,
                                                                                                   module):
    repo = copy_repo(tiny_repo, tmp_path)
    config, files = model_files(repo)
    with v2_server(repo, model_control="explicit") as (app, target, url):
        c = client(module, target, url)
        c.load_model(MODEL)
        c.load_model("uploaded", config=config, files=files)  # a name the repository does not hold
        assert np.array_equal(scores(c, module, "uploaded"), scores(c, module, MODEL))
        assert {m["name"]: m["state"] for m in index(c, module)} == {MODEL: "READY", "uploaded": "READY"}
        [folder] = staged(app)
        assert folder.startswith("uploaded-request-") and app.engines["uploaded"].info.version == folder
        assert app.engines["uploaded"].info.path == app.control._staging.resolve() / folder
        assert not (repo / "uploaded").exists()  # never written into the repository

        c.load_model("uploaded", config=config, files=files)  # a second upload replaces the first: one folder left
        [second] = staged(app)
        assert second != folder and app.engines["uploaded"].info.path.name == second

        c.unload_model("uploaded")
        assert staged(app) == [] and "uploaded" not in app.engines
        status, message = refused(lambda: scores(c, module, "uploaded"))
        assert status in ("StatusCode.NOT_FOUND", "404") and "uploaded" in message
        root = app.control._staging
    assert not root.exists()  # the process's staging folder goes with it


def test_a_manifest_alone_reloads_the_repository_files_with_it_and_a_plain_load_returns_to_the_repository(tiny_repo,
                                                                                                          tmp_path):
    repo = copy_repo(tiny_repo, tmp_path)
    config, _ = model_files(repo)
    manifest = json.loads(config)
    served = manifest["policy"]["thresholds"]
    manifest["policy"]["thresholds"] = [0.5] * (len(served) - 1) + [0.0]  # other thresholds, same ONNX files
    with v2_server(repo, model_control="explicit") as (app, target, url):
        c = tgrpc.InferenceServerClient(target)
        c.load_model(MODEL)
        repository_version = app.engines[MODEL].info.path
        c.load_model(MODEL, config=json.dumps(manifest))
        engine = app.engines[MODEL]
        assert [engine.policy_threshold(k) for k in range(len(served) - 1)] == pytest.approx([0.5] * (len(served) - 1))
        assert engine.info.path.parent == app.control._staging and len(staged(app)) == 1
        assert json.loads((repo / MODEL / "manifest.json").read_text())["policy"]["thresholds"] == served  # untouched

        c.load_model(MODEL)  # without an override: the repository's version again, the staged one removed
        assert app.engines[MODEL].info.path == repository_version and staged(app) == []
        assert [app.engines[MODEL].policy_threshold(k) for k in range(len(served) - 1)] == pytest.approx(served[:-1])


def test_a_file_cut_short_is_refused_by_its_checksum_and_the_loaded_version_serves_on(tiny_repo, tmp_path):
    repo = copy_repo(tiny_repo, tmp_path)
    config, files = model_files(repo)
    with v2_server(repo, model_control="explicit") as (app, target, url):
        c = tgrpc.InferenceServerClient(target)
        c.load_model(MODEL)
        before = app.engines[MODEL]
        cut = {**files, "file:exit_1.onnx": files["file:exit_1.onnx"][:-100]}
        status, message = refused(lambda: c.load_model(MODEL, config=config, files=cut))
        assert status == "StatusCode.INVALID_ARGUMENT" and "failed to load" in message and "exit_1.onnx" in message
        assert "still serving version" in message
        assert app.engines[MODEL] is before and staged(app) == []  # nothing left behind

        missing = {k: v for k, v in files.items() if k != "file:exit_0.onnx"}
        status, message = refused(lambda: c.load_model("other", config=config, files=missing))
        assert status == "StatusCode.INVALID_ARGUMENT" and "exit_0.onnx" in message
        assert "other" not in app.engines and staged(app) == []


def test_bad_names_files_and_configs_are_refused_by_name_before_anything_is_written(tiny_repo, tmp_path):
    repo = copy_repo(tiny_repo, tmp_path)
    config, files = model_files(repo)
    held = sorted(p.name for p in repo.iterdir())
    with v2_server(repo, model_control="explicit") as (app, target, url):
        g = tgrpc.InferenceServerClient(target)
        cases = [
            (lambda: g.load_model(MODEL, config=config, files={**files, "file:../x.onnx": b"x"}),
             "load parameter 'file:../x.onnx': a file is named by its name in the model folder"),
            (lambda: g.load_model(MODEL, config=config, files={"file:1/model.onnx": b"x"}),
             "no folders (a model here has no version folders)"),
            (lambda: g.load_model(MODEL, config=config, files={**files, "file:manifest.json": b"{}"}),
             "the manifest goes in the 'config' parameter"),
            (lambda: g.load_model(MODEL, files=files), "files need the 'config' parameter too"),
            (lambda: g.load_model(MODEL, config="{not json"), "load parameter 'config' is not JSON"),
            (lambda: g.load_model(MODEL, config="[1, 2]"), "must hold a JSON object"),
            (lambda: g.load_model(MODEL, config='{"max_batch_size": 8, "platform": "onnxruntime_onnx"}'),
             "looks like a Triton model configuration (it has ['max_batch_size', 'platform'])"),
            (lambda: g.load_model("../escape", config=config, files=files), "model name '../escape' cannot be loaded"),
            (lambda: g.load_model("new-model", config=config),
             "with only a 'config': the repository holds no model of that name"),
            (lambda: g.load_model(MODEL, config=config, files={f"file:f{i}": b"" for i in range(65)}),
             "65 files in the request; at most 64"),
        ]
        for attempt, says in cases:
            status, message = refused(attempt)
            assert status == "StatusCode.INVALID_ARGUMENT" and says in message, message
        body = {"parameters": {"config": config, "file:exit_0.onnx": "not base64!"}}
        assert error_of(http(f"http://{url}/v2/repository/models/{MODEL}/load", "POST", body)) == (
            400, "load parameter 'file:exit_0.onnx': not valid base64 (Only base64 data is allowed)")
        body = {"parameters": {"config": json.loads(config)}}
        assert error_of(http(f"http://{url}/v2/repository/models/{MODEL}/load", "POST", body)) == (
            400, "load parameter 'config' must be a string holding the model's manifest.json; got dict")
        assert app.engines == {} and staged(app) == [] and sorted(p.name for p in repo.iterdir()) == held

        body = {"parameters": {"config": config, **{k: base64.b64encode(v).decode() for k, v in files.items()}}}
        assert http(f"http://{url}/v2/repository/models/{MODEL}/load", "POST", body)[0] == 200  # the same, well formed
        assert MODEL in app.engines and len(staged(app)) == 1


def upload_size(config: str, files: dict[str, bytes]) -> int:
    """What staging that model takes on disk: its files and its manifest as the server writes it."""
    return sum(map(len, files.values())) + len(json.dumps(json.loads(config), indent=1).encode())


def test_the_upload_quota_refuses_a_load_past_it_by_name_and_an_unload_makes_room(tiny_repo, tmp_path):
    repo = copy_repo(tiny_repo, tmp_path)
    config, files = model_files(repo)
    size = upload_size(config, files)
    quota = int(size * 1.5)  # one staged model fits, two do not
    body = {"parameters": {"config": config, **{k: base64.b64encode(v).decode() for k, v in files.items()}}}
    with v2_server(repo, model_control="explicit", upload_quota_bytes=quota) as (app, target, url):
        g = tgrpc.InferenceServerClient(target)
        g.load_model("first", config=config, files=files)
        [first] = staged(app)

        status, message = refused(lambda: g.load_model("second", config=config, files=files))
        assert status == "StatusCode.RESOURCE_EXHAUSTED", message
        assert message == (f"load of model 'second': its files ({size / 2**20:.2f} MB) would take the models loaded from "
                           f"requests' files to {2 * size / 2**20:.2f} MB, past this server's --upload-quota-mb "
                           f"({quota / 2**20:.2f} MB; {size / 2**20:.2f} MB held now, a replaced version's until its "
                           "successor serves); unload such a model (the repository index lists them, versions "
                           "NAME-request-...) or raise the quota")
        status, text = error_of(http(f"http://{url}/v2/repository/models/second/load", "POST", body))
        assert status == 507 and "past this server's --upload-quota-mb" in text  # Insufficient Storage, not 429
        # a new version of the staged model needs room for both until it serves: refused too, the old one serves on
        status, message = refused(lambda: g.load_model("first", config=config, files=files))
        assert status == "StatusCode.RESOURCE_EXHAUSTED" and "'first'" in message
        assert staged(app) == [first] and "second" not in app.engines
        g.load_model(MODEL)
        assert np.array_equal(scores(g, tgrpc, "first"), scores(g, tgrpc, MODEL))
        # a manifest alone is staged with a copy of the repository's files: counted the same
        status, message = refused(lambda: g.load_model(MODEL, config=config))
        assert status == "StatusCode.RESOURCE_EXHAUSTED" and f"load of model '{MODEL}'" in message

        g.unload_model("first")
        assert staged(app) == []
        assert http(f"http://{url}/v2/repository/models/second/load", "POST", body)[0] == 200  # the room it left
        assert len(staged(app)) == 1 and "second" in app.engines


def test_with_the_quota_at_zero_loads_with_files_are_refused_and_loads_by_name_still_work(tiny_repo, tmp_path):
    repo = copy_repo(tiny_repo, tmp_path)
    config, files = model_files(repo)
    with v2_server(repo, model_control="explicit", upload_quota_bytes=0) as (app, target, url):
        g = tgrpc.InferenceServerClient(target)
        for attempt in (lambda: g.load_model("up", config=config, files=files), lambda: g.load_model(MODEL, config=config)):
            status, message = refused(attempt)
            assert status == "StatusCode.FAILED_PRECONDITION" and message == (
                "loads that carry a model's files or manifest are off on this server (--upload-quota-mb 0); load a "
                "model of the repository by name")
        g.load_model(MODEL)
        assert MODEL in app.engines and staged(app) == []


def test_a_load_that_would_leave_the_disk_nearly_full_is_refused_and_a_full_disk_while_writing_leaves_nothing(
        tiny_repo, tmp_path, monkeypatch):
    repo = copy_repo(tiny_repo, tmp_path)
    config, files = model_files(repo)
    manifest = json.loads(config)
    payload = {k[len(FILE_PREFIX):]: v for k, v in files.items()}
    root = tmp_path / "staging"
    usage = shutil.disk_usage(tmp_path)
    nearly_full = usage._replace(free=model_upload.FREE_SPACE_FLOOR + 1000)
    monkeypatch.setattr(model_upload.shutil, "disk_usage", lambda path: nearly_full)
    with pytest.raises(InsufficientStorage) as e:
        model_upload.stage(root, "up", manifest, payload, None, 2**30)
    assert str(e.value).startswith("load of model 'up': its files (") and "under the 256.00 MB a load always leaves" in str(e.value)
    assert folders(root) == []
    monkeypatch.undo()

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(InsufficientStorage) as e:
        model_upload.stage(root, "up", manifest, payload, None, 2**30)
    assert "ran out of space while its files were written (No space left on device); nothing was kept" in str(e.value)
    assert folders(root) == []  # the half-written folder went too
    monkeypatch.undo()
    assert (model_upload.stage(root, "up", manifest, payload, None, 2**30) / "manifest.json").exists()


def worker_state_folder(supervisor_pid: int) -> Path:
    """The --worker-state folder the supervisor gave its workers (read from a worker's command line)."""
    worker = subprocess.run(["pgrep", "-P", str(supervisor_pid)], capture_output=True, text=True).stdout.split()[0]
    argv = Path(f"/proc/{worker}/cmdline").read_bytes().split(b"\0")
    return Path(argv[argv.index(b"--worker-state") + 1].decode())


@pytest.mark.slow
def test_under_workers_an_upload_reaches_every_worker_and_a_replacement_and_its_files_go_at_unload(tiny_repo):
    config, files = model_files(tiny_repo)
    proc, _, _, _, http_port, _, port_file = start_workers(tiny_repo, "--model-control-mode", "explicit")
    base = f"http://127.0.0.1:{http_port}/v2"
    try:
        shared = worker_state_folder(proc.pid) / "loaded-models"
        body = {"parameters": {"config": config, **{k: base64.b64encode(v).decode() for k, v in files.items()}}}
        assert call(f"{base}/repository/models/uploaded/load", body) == (200, {})
        answers = spread(f"{base}/models/uploaded/infer", infer_body())
        assert [code for code, _ in answers] == [200] * len(answers), answers[:3]
        assert len({json.dumps(doc["outputs"]) for _, doc in answers}) == 1  # every worker, the same answer
        assert len(folders(shared)) == 1

        replace_a_worker(proc, [int(v) for v in port_file.read_text().split()[4:]])
        answers = spread(f"{base}/models/uploaded/infer", infer_body())  # the replacement loaded the staged files
        assert [code for code, _ in answers] == [200] * len(answers), answers[:3]

        assert call(f"{base}/repository/models/uploaded/unload", {}) == (200, {})
        assert [code for code, _ in spread(f"{base}/models/uploaded/infer", infer_body())] == [404] * len(answers)
        assert folders(shared) == []
    finally:
        stop(proc)
    assert not os.path.exists(shared)  # the supervisor's folder goes at exit


def mutated(manifest: dict, data) -> dict:
    """The manifest with one of its fields (or one of an exit's) deleted or replaced by a value of another kind."""
    doc = json.loads(json.dumps(manifest))
    target = doc if data.draw(st.booleans()) else data.draw(st.sampled_from(doc["exits"]))
    key = data.draw(st.sampled_from(sorted(target)))
    if data.draw(st.booleans()):
        del target[key]
    else:
        target[key] = data.draw(st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True),
                                          st.text(max_size=8), st.lists(st.integers(), max_size=3)))
    return doc


def test_fuzzed_overrides_are_refused_by_name_leave_nothing_behind_and_the_server_keeps_serving(tiny_repo, tmp_path):
    """Generated loads with an override, over HTTP: a manifest with a field deleted or of another kind, file names
    and contents of any kind, base64 or not; each answered 200 or 400/404 with a message, never a 500; a refused one
    leaves no staging folder, the repository and the loaded model unchanged."""
    repo = copy_repo(tiny_repo, tmp_path)
    config, files = model_files(repo)
    manifest = json.loads(config)
    held = sorted(p.name for p in repo.iterdir())
    statuses: dict[int, int] = {}
    with v2_server(repo, model_control="explicit") as (app, target, url):
        assert http(f"http://{url}/v2/repository/models/{MODEL}/load", "POST", b"")[0] == 200

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.data())
        def send(data):
            parameters = {k: base64.b64encode(v).decode() for k, v in files.items()}
            kind = data.draw(st.sampled_from(["manifest", "names", "contents"]))
            if kind == "manifest":
                parameters["config"] = json.dumps(mutated(manifest, data))
            else:
                parameters["config"] = config
                if kind == "names":
                    parameters[FILE_PREFIX + data.draw(st.text(max_size=20))] = base64.b64encode(b"x").decode()
                else:
                    name = data.draw(st.sampled_from(sorted(files)))
                    parameters[name] = data.draw(st.one_of(st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
                                                           st.text(max_size=16), st.integers(), st.none()))
            name = data.draw(st.sampled_from(["fuzzed", MODEL, "..", "x" * 200]))
            status, _, text = http(f"http://{url}/v2/repository/models/{quote(name, safe='')}/load", "POST",
                                   {"parameters": parameters})
            statuses[status] = statuses.get(status, 0) + 1
            assert status in (200, 400, 404), (kind, status, text[:300])
            if status != 200:
                assert json.loads(text)["error"], text
            root = app.control._staging  # every staging folder is one a loaded model serves from: none left behind
            served = {e.info.path.name for e in app.engines.values() if root and e.info.path.parent == root.resolve()}
            assert set(staged(app)) == served, (staged(app), served)

        send()
        assert sorted(p.name for p in repo.iterdir()) == held  # nothing written into the repository
        assert statuses.get(400, 0) > 50, statuses  # (a manifest without e.g. its 'training' block loads: 200)
        assert http(f"http://{url}/v2/models/{MODEL}/infer", "POST", {"inputs": [{
            "name": "pixels", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [0] * 3072}]})[0] == 200
