"""Poll mode watches the repository's membership, as Triton's POLL: a model added is loaded, a model gone for two
polls in a row is unloaded; a publish's symlink swap, however often, never unloads; a broken model added is refused
once and listed with its reason; with --model naming the models, membership is not watched."""

import asyncio
import shutil
import threading
import time

import grpc
import tritonclient.grpc as tgrpc

from export.atomic import publish
from server.client import Client
from tests.server.helpers import wait_for
from tests.server.test_model_control import GOOD, MODEL, copy_repo, index
from tests.server.test_serving import metric
from tests.server.v2_helpers import v2_server


def poll(app) -> None:
    """One membership poll, run on the server's loop (tests with a long --poll-s drive the polls themselves)."""
    asyncio.run_coroutine_threadsafe(app.control.poll_membership(app._refused), app.loop).result(30)


def classify(target, model):
    with Client(target) as c:
        return c.classify(GOOD, model=model)


def test_a_model_added_is_loaded_and_one_removed_is_unloaded(tiny_repo, tmp_path):
    repo = copy_repo(tiny_repo, tmp_path)
    with v2_server(repo, poll_s=0.05) as (app, target, url):
        (repo / "other").symlink_to((repo / MODEL).resolve())
        assert wait_for(lambda: "other" in app.engines, timeout_s=20)
        assert classify(target, "other").model_version == (repo / MODEL).resolve().name
        g = tgrpc.InferenceServerClient(target)
        assert {m["name"]: m["state"] for m in index(g, tgrpc)} == {MODEL: "READY", "other": "READY"}

        (repo / "other").unlink()
        assert wait_for(lambda: "other" not in app.engines, timeout_s=20)
        try:
            classify(target, "other")
            raise AssertionError("a removed model answered")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND and "is not loaded" in e.details()
        assert [m["name"] for m in index(g, tgrpc)] == [MODEL]  # neither in the repository nor loaded
        assert classify(target, MODEL).class_name  # the other model never noticed
        assert metric(app, "auxnet_model_control_total", model="other", action="load", result="ok") == 1
        assert metric(app, "auxnet_model_control_total", model="other", action="unload", result="ok") == 1


def test_a_folder_missing_for_one_poll_is_not_an_unload_two_polls_are(tiny_repo, tmp_path):
    repo = copy_repo(tiny_repo, tmp_path, names=(MODEL, "other"))
    with v2_server(repo, poll_s=3600) as (app, target, url):  # the polls below are the only ones
        target_dir = (repo / "other").resolve()
        (repo / "other").unlink()  # e.g. a copy made by hand: rm, then cp
        poll(app)
        assert "other" in app.engines
        (repo / "other").symlink_to(target_dir)
        poll(app)  # back in time: the count starts again
        (repo / "other").unlink()
        poll(app)
        assert "other" in app.engines and classify(target, "other").class_name
        poll(app)  # the second poll in a row without it
        assert "other" not in app.engines and MODEL in app.engines
        (repo / "other").symlink_to(target_dir)
        poll(app)  # and back: loaded again
        assert "other" in app.engines and classify(target, "other").class_name


def test_publishing_again_and_again_under_traffic_never_unloads_or_fails_a_request(tiny_repo, tmp_path):
    repo = copy_repo(tiny_repo, tmp_path)
    with v2_server(repo, poll_s=0.02) as (app, target, url):
        errors, answered, stop = [], [0], threading.Event()

        def traffic():
            with Client(target) as c:
                while not stop.is_set():
                    try:
                        c.classify(GOOD, model=MODEL)
                        answered[0] += 1
                    except grpc.RpcError as e:
                        errors.append(f"{e.code().name}: {e.details()}")

        threads = [threading.Thread(target=traffic) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            for i in range(12):  # each publish swaps the symlink atomically and deletes the version it replaced
                staging = repo / ".versions" / f"staging-{i}"
                shutil.copytree((repo / MODEL).resolve(), staging)
                publish(repo, MODEL, staging)
                time.sleep(0.1)
            assert wait_for(lambda: app.engines[MODEL].info.path == (repo / MODEL).resolve(), timeout_s=30)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert errors == [] and answered[0] > 0
        assert metric(app, "auxnet_model_control_total", model=MODEL, action="unload") == 0
        assert metric(app, "auxnet_model_reloads_total", model=MODEL, result="ok") >= 1


def test_a_broken_model_added_is_refused_once_listed_with_its_reason_then_loaded_when_mended(tiny_repo, tmp_path):
    repo = copy_repo(tiny_repo, tmp_path)
    with v2_server(repo, poll_s=3600) as (app, target, url):
        staging = repo / ".versions" / "broken-staging"
        shutil.copytree((repo / MODEL).resolve(), staging)
        (staging / "exit_0.onnx").write_bytes(b"not onnx")
        publish(repo, "other", staging)
        for _ in range(3):
            poll(app)
        assert "other" not in app.engines
        assert metric(app, "auxnet_model_control_total", model="other", action="load", result="refused") == 1  # not per poll
        states = {m["name"]: (m["state"], m["reason"]) for m in index(tgrpc.InferenceServerClient(target), tgrpc)}
        assert states["other"][0] == "UNAVAILABLE" and "checksum mismatch" in states["other"][1]
        good = repo / ".versions" / "good-staging"
        shutil.copytree((repo / MODEL).resolve(), good)
        publish(repo, "other", good)  # mended: the folder points elsewhere, so it is tried again
        poll(app)
        assert "other" in app.engines and classify(target, "other").class_name


def test_with_models_named_at_start_membership_is_not_watched(tiny_repo, tmp_path):
    repo = copy_repo(tiny_repo, tmp_path)
    with v2_server(repo, poll_s=0.05, models=(MODEL,)) as (app, target, url):
        (repo / "other").symlink_to((repo / MODEL).resolve())
        time.sleep(0.6)  # a dozen polls
        assert sorted(app.engines) == [MODEL]
        (repo / MODEL).unlink()
        time.sleep(0.6)
        assert sorted(app.engines) == [MODEL]  # what --model named stays, as before


def test_a_repository_that_cannot_be_listed_unloads_nothing(tiny_repo, tmp_path, caplog):
    """A mount's hiccup or a moved repository must not read as every model removed."""
    import logging

    repo = copy_repo(tiny_repo, tmp_path)
    with v2_server(repo, poll_s=3600) as (app, target, url):
        moved = tmp_path / "moved"
        repo.rename(moved)
        with caplog.at_level(logging.ERROR, logger="auxnet.server"):
            for _ in range(3):
                poll(app)
        assert MODEL in app.engines and classify(target, MODEL).class_name
        assert caplog.text.count("cannot list the model repository") == 1  # once, not per poll
        moved.rename(repo)
        poll(app)
        assert MODEL in app.engines
