"""Triton's model repository extension (server/model_control.py): the index, loading and unloading models while
serving in explicit mode, refusals in the other modes and with --reuse-port alone, bad names and parameters, broken
versions, switching versions and unloading under load without losing a request; through Triton's own clients."""

import asyncio
import shutil
import threading
import time

import grpc
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from server.client import Client
from tests.server.helpers import images, png
from tests.server.test_serving import metric
from tests.server.v2_helpers import error_of, http, v2_server

MODEL = "tiny"
GOOD = png(images(1)[0])


def client(module, target, url):
    return module.InferenceServerClient(target if module is tgrpc else url)


def index(c, module):
    """The index as a list of {name, version, state, reason} (gRPC's JSON leaves out empty fields)."""
    if module is thttp:
        return c.get_model_repository_index()
    got = c.get_model_repository_index(as_json=True).get("models", [])
    return [{"name": m["name"], "version": m.get("version", ""), "state": m["state"], "reason": m.get("reason", "")}
            for m in got]


def refused(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as e:
        call()
    return str(e.value.status()), e.value.message()


def copy_repo(tiny_repo, tmp_path, names=(MODEL,)):
    """A repository of its own (tests publish into it): the tiny model under each name."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo, symlinks=True)
    for name in names:
        if name != MODEL:
            (repo / name).symlink_to((repo / MODEL).resolve())
    return repo


@pytest.mark.parametrize("module", [tgrpc, thttp], ids=["grpc", "http"])
def test_explicit_mode_starts_empty_then_loads_serves_and_unloads(tiny_repo, tmp_path, module):
    repo = copy_repo(tiny_repo, tmp_path)
    with v2_server(repo, model_control="explicit") as (app, target, url):
        c = client(module, target, url)
        assert c.is_server_ready() and app.engines == {}  # ready with nothing loaded, as Triton's explicit mode
        assert index(c, module) == [{"name": MODEL, "version": "", "state": "UNAVAILABLE", "reason": "not loaded"}]
        with Client(target) as cl, pytest.raises(grpc.RpcError) as e:
            cl.classify(GOOD, model=MODEL)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND and "is not loaded" in e.value.details()

        c.load_model(MODEL)
        version = (repo / MODEL).resolve().name
        assert index(c, module) == [{"name": MODEL, "version": version, "state": "READY", "reason": ""}]
        assert c.is_model_ready(MODEL)
        with Client(target) as cl:
            assert cl.classify(GOOD, model=MODEL).model_version == version
        c.load_model(MODEL)  # the same version again: nothing to do
        assert app.engines[MODEL].info.version == version and metric(app, "auxnet_model_control_total", action="load") == 1

        c.unload_model(MODEL)
        assert MODEL not in app.engines
        assert index(c, module) == [{"name": MODEL, "version": "", "state": "UNAVAILABLE", "reason": "unloaded"}]
        assert not c.is_model_ready(MODEL)
        with Client(target) as cl, pytest.raises(grpc.RpcError) as e:
            cl.classify(GOOD, model=MODEL)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        c.unload_model(MODEL)  # not loaded: nothing to do, as Triton
        assert metric(app, "auxnet_model_control_total", action="unload", result="ok") == 1
        assert "model_repository" in c.get_server_metadata(**({"as_json": True} if module is tgrpc else {}))["extensions"]


@pytest.mark.parametrize("module", [tgrpc, thttp], ids=["grpc", "http"])
def test_load_and_unload_are_refused_outside_explicit_mode_and_the_index_answers(tiny_repo, module):
    for mode, says in (("poll", "mode 'poll', where its models are fixed at start and new versions are polled"),
                       ("none", "mode 'none', where its models are fixed at start")):
        with v2_server(tiny_repo, model_control=mode) as (app, target, url):
            c = client(module, target, url)
            for call in (c.load_model, c.unload_model):
                status, message = refused(lambda call=call: call(MODEL))
                assert status in ("StatusCode.FAILED_PRECONDITION", "400") and says in message
                assert "needs --model-control-mode explicit" in message
            assert MODEL in app.engines and app.engines[MODEL].accepting
            assert [m["state"] for m in index(c, module)] == ["READY"]


def test_names_parameters_and_repositories_are_checked_before_anything_changes(tiny_repo, tmp_path):
    repo = copy_repo(tiny_repo, tmp_path)
    with v2_server(repo, model_control="explicit") as (app, target, url):
        g = tgrpc.InferenceServerClient(target)
        for name in ("nope", "../repo/tiny", ".versions", "x" * 300):
            status, message = refused(lambda n=name: g.load_model(n))
            assert status == "StatusCode.NOT_FOUND" and "is not in the repository" in message and "holds ['tiny']" in message
        status, message = refused(lambda: g.unload_model("nope"))
        assert status == "StatusCode.NOT_FOUND" and "neither loaded nor in the repository" in message
        status, message = refused(lambda: g.load_model(MODEL, config='{"max_batch_size": 8}'))  # Triton's config
        assert status == "StatusCode.INVALID_ARGUMENT" and "looks like a Triton model configuration" in message
        status, message = refused(lambda: g.load_model(MODEL, files={"file:1/model.onnx": b"x"}))  # a version folder
        assert "a model here has no version folders" in message  # (more in test_model_upload.py)
        assert app.engines == {}

        base = f"http://{url}/v2/repository"
        assert error_of(http(f"{base}/models/{MODEL}/load", "POST", {"parameters": {"warmup": True}})) == (
            400, "unknown load parameter 'warmup'; accepted: none")
        assert error_of(http(f"{base}/models/{MODEL}/unload", "POST", {"parameters": {"unload_dependents": "yes"}})) == (
            400, "unload parameter 'unload_dependents' must be a bool; got 'yes'")
        assert error_of(http(f"{base}/models/{MODEL}/load", "POST", b"[1]")) == (400, "model load: the body must be a JSON object")
        assert error_of(http(f"{base}/models/{MODEL}/load", "POST", b"{"))[1].startswith("model load: the body is not JSON")
        assert error_of(http(f"{base}/index", "POST", {"ready": "yes"})) == (
            400, "repository index: 'ready' must be true or false; got \"yes\"")
        assert error_of(http(f"{base}/index", "POST", {"ready": True, "all": 1}))[1].startswith(
            "repository index: unknown field(s) ['all']")
        assert app.engines == {}

        stub = g._client_stub
        from tritonclient.grpc import service_pb2
        with pytest.raises(grpc.RpcError) as e:
            stub.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(repository_name="/elsewhere", model_name=MODEL))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "repository '/elsewhere' is not served here" in e.value.details()
        stub.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(repository_name=str(repo), model_name=MODEL))
        assert MODEL in app.engines
        assert http(f"{base}/index", "POST", {"ready": True})[0] == 200


def test_a_broken_version_is_refused_naming_why_and_a_loaded_one_keeps_serving(tiny_run, tiny_repo, tmp_path):
    from export.atomic import publish

    repo = copy_repo(tiny_repo, tmp_path, names=(MODEL, "other"))
    with v2_server(repo, model_control="explicit", models=(MODEL,)) as (app, target, url):
        g = tgrpc.InferenceServerClient(target)
        version = app.engines[MODEL].info.version
        staging = repo / ".versions" / "broken-staging"
        shutil.copytree(repo / MODEL, staging)
        (staging / "exit_0.onnx").write_bytes(b"not onnx")
        publish(repo, MODEL, staging)
        status, message = refused(lambda: g.load_model(MODEL))
        assert status == "StatusCode.INVALID_ARGUMENT" and "model 'tiny' failed to load" in message
        assert "checksum mismatch" in message and f"still serving version {version}" in message
        with Client(target) as cl:
            assert cl.classify(GOOD, model=MODEL).model_version == version

        (repo / "other").unlink()
        (repo / "other").symlink_to((repo / MODEL).resolve())  # the broken version, published above
        status, message = refused(lambda: g.load_model("other"))
        assert "checksum mismatch" in message and "still serving" not in message
        states = {m["name"]: (m["state"], m["reason"]) for m in index(g, tgrpc)}
        assert states[MODEL] == ("READY", "")
        assert states["other"][0] == "UNAVAILABLE" and states["other"][1].startswith("load failed: ") and "checksum" in states["other"][1]
        assert metric(app, "auxnet_model_control_total", action="load", result="refused") == 2


def test_a_load_switches_to_a_new_version_and_an_unload_under_load_loses_no_admitted_request(tiny_run, tiny_repo, tmp_path):
    from export.build import export_model

    repo = copy_repo(tiny_repo, tmp_path)
    with v2_server(repo, model_control="explicit", models=("*",)) as (app, target, url):
        g = tgrpc.InferenceServerClient(target)
        old = app.engines[MODEL].info.version
        outcomes, stop = [], threading.Event()

        def send():
            with Client(target, retries=0) as c:
                while not stop.is_set():
                    try:
                        outcomes.append(("OK", c.classify(GOOD, model=MODEL).model_version))
                    except grpc.RpcError as e:
                        outcomes.append((e.code().name, e.details()))

        threads = [threading.Thread(target=send) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        export_model(str(tiny_run), str(repo), MODEL, measure=False, log=lambda *a: None)  # a new version in place
        g.load_model(MODEL)  # returns once the new version serves
        new = app.engines[MODEL].info.version
        time.sleep(1.5)  # the old version retires under load
        switched = len(outcomes)
        g.unload_model(MODEL)  # returns once every admitted request is answered and the model stopped
        assert MODEL not in app.engines
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(10)
        assert new != old
        before_unload = outcomes[:switched]
        assert all(code == "OK" for code, _ in before_unload), [o for o in before_unload if o[0] != "OK"][:3]
        assert {v for _, v in before_unload} == {old, new}
        codes = {code for code, _ in outcomes[switched:]}
        assert codes <= {"OK", "NOT_FOUND", "UNAVAILABLE"} and "NOT_FOUND" in codes
        gone = [d for code, d in outcomes if code == "UNAVAILABLE"]
        assert all("model 'tiny' is being unloaded" in d for d in gone), gone[:3]
        assert metric(app, "auxnet_requests_total", code="INTERNAL") == 0


def test_with_reuse_port_alone_load_and_unload_are_refused(tiny_repo):
    """Under a --workers supervisor they are shared (tests/server/test_worker_sync.py)."""
    with v2_server(tiny_repo, model_control="explicit", models=(MODEL,), reuse_port=True) as (app, target, url):
        status, message = refused(lambda: tgrpc.InferenceServerClient(target).unload_model(MODEL))
        assert status == "StatusCode.FAILED_PRECONDITION" and "started with --reuse-port alone" in message
        assert app.engines[MODEL].accepting


def test_the_repository_api_needs_the_token(tiny_repo, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    with v2_server(tiny_repo, model_control="explicit", auth_token_file=str(token)) as (app, target, url):
        status, _, _ = http(f"http://{url}/v2/repository/models/{MODEL}/load", "POST", {})
        assert status == 401 and app.engines == {}
        with pytest.raises(InferenceServerException) as e:
            tgrpc.InferenceServerClient(target).get_model_repository_index()
        assert "bearer token" in e.value.message()
        ok = http(f"http://{url}/v2/repository/models/{MODEL}/load", "POST", {}, {"Authorization": "Bearer s3cret"})
        assert ok[0] == 200 and MODEL in app.engines


def test_a_load_whose_caller_leaves_still_finishes(tiny_repo, tmp_path):
    repo = copy_repo(tiny_repo, tmp_path)
    with v2_server(repo, model_control="explicit") as (app, target, url):
        async def leave_early():
            task = asyncio.ensure_future(app.control.load(MODEL))
            await asyncio.sleep(0.01)  # the engine is loading in a thread now
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return task.cancelled()

        assert asyncio.run_coroutine_threadsafe(leave_early(), app.loop).result(30)
        deadline = time.monotonic() + 30
        while MODEL not in app.engines and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app.engines[MODEL].accepting and app.control.busy == {}


def test_the_command_starts_in_explicit_mode_with_no_model_and_loads_one_through_the_api(tiny_repo):
    from tests.server.helpers import start_server_process

    proc, target, _ = start_server_process(tiny_repo, "--model-control-mode", "explicit")
    try:
        g = tgrpc.InferenceServerClient(target)
        assert g.is_server_ready() and [m["state"] for m in index(g, tgrpc)] == ["UNAVAILABLE"]
        g.load_model(MODEL)
        with Client(target) as c:
            assert c.classify(GOOD, model=MODEL).exit_index >= 0
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


def test_an_unloaded_version_is_freed_when_the_unload_returns(tiny_repo, tmp_path):
    """Its sessions must not outlive it: release_freed_memory (server/memory.py) can only give back what is free."""
    import weakref

    repo = copy_repo(tiny_repo, tmp_path)
    with v2_server(repo, model_control="explicit", models=(MODEL,)) as (app, target, url):
        with Client(target) as c:
            c.classify(GOOD, model=MODEL)
        engine = weakref.ref(app.engines[MODEL])
        asyncio.run_coroutine_threadsafe(app.control.unload(MODEL), app.loop).result(30)
        assert engine() is None


def test_a_version_switched_away_from_is_freed_once_retired(tiny_repo, tmp_path):
    import os
    import weakref

    repo = copy_repo(tiny_repo, tmp_path)
    copy = repo / ".versions" / "tiny-copy"
    shutil.copytree((repo / MODEL).resolve(), copy)
    with v2_server(repo, model_control="explicit", models=(MODEL,)) as (app, target, url):
        old = weakref.ref(app.engines[MODEL])
        (repo / ".link").symlink_to(os.path.join(".versions", copy.name))
        os.replace(repo / ".link", repo / MODEL)
        tgrpc.InferenceServerClient(target).load_model(MODEL)
        assert app.engines[MODEL].info.version == "tiny-copy"
        deadline = time.monotonic() + 20
        while app._retiring and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not app._retiring and old() is None


def test_a_storm_of_loads_and_unloads_with_short_deadlines_leaves_a_consistent_server(tiny_repo, tmp_path):
    """Eight callers load and unload two models at random, some with deadlines shorter than a load, beside
    traffic: every call ends OK, NOT_FOUND-free and INTERNAL-free (or DEADLINE_EXCEEDED at the caller), and at
    the end the index, the model table and the model_info metric agree."""
    import random

    repo = copy_repo(tiny_repo, tmp_path, names=(MODEL, "other"))
    names = (MODEL, "other")
    with v2_server(repo, model_control="explicit") as (app, target, url):
        outcomes, traffic_codes, stop = [], [], threading.Event()

        def storm(seed):
            rng = random.Random(seed)
            c = tgrpc.InferenceServerClient(target)
            for _ in range(12):
                name, action = rng.choice(names), rng.choice(("load", "unload"))
                timeout = rng.choice((None, None, 0.05))
                try:
                    (c.load_model if action == "load" else c.unload_model)(name, client_timeout=timeout)
                    outcomes.append("OK")
                except InferenceServerException as e:
                    outcomes.append(f"{e.status()}: {e.message()}")

        def traffic():
            with Client(target, retries=0) as c:
                while not stop.is_set():
                    try:
                        c.classify(GOOD, model=random.choice(names))
                        traffic_codes.append("OK")
                    except grpc.RpcError as e:
                        traffic_codes.append(e.code().name)

        senders = [threading.Thread(target=traffic) for _ in range(2)]
        callers = [threading.Thread(target=storm, args=(i,)) for i in range(8)]
        for t in senders + callers:
            t.start()
        for t in callers:
            t.join(120)
        stop.set()
        for t in senders:
            t.join(30)
        deadline = time.monotonic() + 30  # loads whose caller left finish on their own
        while (app.control.busy or app._retiring) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app.control.busy == {}
        bad = [o for o in outcomes if o != "OK" and not o.startswith("StatusCode.DEADLINE_EXCEEDED")]
        assert bad == [] and len(outcomes) == 96
        assert set(traffic_codes) <= {"OK", "NOT_FOUND", "UNAVAILABLE"}, set(traffic_codes)
        states = {m["name"]: m["state"] for m in index(tgrpc.InferenceServerClient(target), tgrpc)}
        assert states == {n: "READY" if n in app.engines else "UNAVAILABLE" for n in names}
        shown = {s.labels["model"] for f in app.metrics.registry.collect() for s in f.samples
                 if s.name == "auxnet_model_info" and s.value == 1}
        assert shown == set(app.engines)
        for name in app.engines:  # what is loaded serves
            with Client(target) as c:
                c.classify(GOOD, model=name)


def test_the_command_refuses_an_unknown_mode_by_name_and_star_loads_every_model(tiny_repo, tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "server", "--repo", str(tiny_repo), "--model-control-mode", "manual"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--model-control-mode: invalid choice: 'manual'" in out.stderr
    repo = copy_repo(tiny_repo, tmp_path, names=(MODEL, "other"))
    with v2_server(repo, models=("*",)) as (app, target, url):
        assert sorted(app.engines) == ["other", MODEL]


def test_a_load_that_ends_during_shutdown_never_starts_the_model(tiny_repo, tmp_path):
    repo = copy_repo(tiny_repo, tmp_path)
    with v2_server(repo, model_control="explicit") as (app, target, url):
        real = app._load_engine

        def slow_load(folder, name=None):
            time.sleep(1.0)  # shutdown begins meanwhile
            return real(folder, name)

        app._load_engine = slow_load

        async def load_then_stop():
            load = asyncio.ensure_future(app.control.load(MODEL))
            await asyncio.sleep(0.3)
            drained = await app.shutdown(2.0)
            return drained, (await asyncio.gather(load, return_exceptions=True))[0]

        drained, outcome = asyncio.run_coroutine_threadsafe(load_then_stop(), app.loop).result(30)
        assert drained and app.engines == {}
        assert type(outcome).__name__ == "NotServing" and "the model was not started" in str(outcome)
