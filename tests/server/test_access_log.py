"""The access log: one JSON line per inference request on every surface, with what the client was told."""

import base64
import json

import grpc
import pytest

from server.access_log import AccessLog
from server.client import Client
from server.workers import worker_argv
from tests.server.conftest import running_server
from tests.server.helpers import images, png
from tests.server.test_open_inference import bytes_input
from tests.server.v2_helpers import error_of, http


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_surface_writes_a_line_with_its_outcome(tiny_repo, tmp_path):
    log = tmp_path / "access.jsonl"
    encoded = [png(a) for a in images(2)]
    with running_server(tiny_repo, access_log=str(log)) as (app, target):
        with Client(target) as c:
            one = c.classify(encoded[0], calibrated_policy=True, request_id="client-7")
            two = c.classify_batch(encoded, max_exit=0, request_id="batch-1")
            with pytest.raises(grpc.RpcError) as bad:
                c.classify(b"not an image")
            with pytest.raises(grpc.RpcError):
                c.classify(encoded[0], model="nope")
            c.model_info()  # not an inference request: no line
        url = f"http://127.0.0.1:{app.http_port}/v2/models/tiny/infer"
        ok = http(url, "POST", {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                            "parameters": {"content_type": "base64"},
                                            "data": [base64.b64encode(encoded[1]).decode()]}], "id": "http-3"})
        refused = error_of(http(url, "POST", {"inputs": []}))
        import tritonclient.grpc as tgrpc

        v2 = tgrpc.InferenceServerClient(target).infer("tiny", [bytes_input(tgrpc, encoded)], parameters={"max_exit": 0},
                                                       request_id="grpc-9")
    assert ok[0] == 200 and refused[0] == 400
    got = lines(log)  # the server has stopped: the file is complete
    assert [(g["surface"], g["method"], g["code"], g["images"]) for g in got] == [
        ("auxnet.v1", "Classify", "OK", 1), ("auxnet.v1", "ClassifyBatch", "OK", 2),
        ("auxnet.v1", "Classify", "INVALID_ARGUMENT", 1), ("auxnet.v1", "Classify", "NOT_FOUND", 1),
        ("v2-http", "infer", "OK", 1), ("v2-http", "infer", "INVALID_ARGUMENT", 1), ("v2-grpc", "ModelInfer", "OK", 2)]
    assert got[0]["exits"] == [one.exit_index] and got[0]["reasons"] == [_reason(one)]
    assert got[1]["exits"] == [r.exit_index for r in two] == [0, 0] and got[1]["reasons"] == ["max_exit", "max_exit"]
    assert got[2]["message"] == bad.value.details() and "not a supported image format" in got[2]["message"]
    assert got[3]["model"] == "nope" and "is not loaded" in got[3]["message"]
    assert got[0]["model"] == "tiny"  # no name sent: the one model loaded answered
    # The client's own request ids, to find a request again; none where none was sent.
    assert [g.get("id") for g in got] == ["client-7", ["batch-1", "batch-1"], None, None, "http-3", None, "grpc-9"]
    assert got[5]["message"] == refused[1]
    assert all(g["peer"] and g["ms"] >= 0 and g["time"] > 1.7e9 for g in got)
    assert got[6]["exits"] == v2.as_numpy("exit_index").tolist() == [0, 0] and got[6]["reasons"] == ["max_exit"] * 2
    assert got[4]["exits"] == [json.loads(ok[2])["outputs"][_output(ok, "exit_index")]["data"][0]]


def test_sampling_keeps_every_error_and_drops_successes_at_zero(tiny_repo, tmp_path):
    log = tmp_path / "access.jsonl"
    with running_server(tiny_repo, access_log=str(log), access_log_sample=0.0, http_port=None) as (_, target):
        with Client(target) as c:
            for a in images(3):
                c.classify(png(a))
            with pytest.raises(grpc.RpcError):
                c.classify(b"")
    assert [g["code"] for g in lines(log)] == ["INVALID_ARGUMENT"]


def test_bad_settings_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="cannot open the access log"):
        AccessLog(str(tmp_path / "missing-folder" / "log"))
    with pytest.raises(ValueError, match="sample 1.5 must be in"):
        AccessLog(str(tmp_path / "log"), sample=1.5)


def test_each_worker_process_writes_a_file_of_its_own():
    argv = worker_argv(["--repo", "r", "--access-log", "a.jsonl"], 8500, None, None, "ports", "a.jsonl.1")
    assert argv[-2:] == ["--access-log", "a.jsonl.1"]  # argparse keeps the last: the worker's own file


def _output(response, name: str) -> int:
    return [o["name"] for o in json.loads(response[2])["outputs"]].index(name)


def _reason(r) -> str:
    from server.client import STOP_NAMES

    return STOP_NAMES[r.stop_reason].removeprefix("STOP_REASON_").lower()


def test_the_file_rotates_and_a_stalled_writer_drops_and_counts(tmp_path, monkeypatch):
    import server.access_log as access_log

    monkeypatch.setattr(access_log, "MAX_BYTES", 1000)
    monkeypatch.setattr(access_log, "FLUSH_S", 0.01)
    log = AccessLog(str(tmp_path / "a.jsonl"))
    for i in range(40):  # ~150 bytes a line: a few rotations
        log.record("auxnet.v1", "Classify", "m", "OK", 1, 0.0, message=f"line {i}")
        if i % 5 == 4:
            assert _wait(lambda: not log.pending)
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["a.jsonl", "a.jsonl.1", "a.jsonl.2"]  # two kept, older ones gone
    kept = [json.loads(x)["message"] for name in reversed(files) for x in (tmp_path / name).read_text().splitlines()]
    assert kept == [f"line {i}" for i in range(40 - len(kept), 40)]  # the newest, in order, none duplicated

    monkeypatch.setattr(access_log, "FLUSH_S", 3600.0)  # a writer that does not come round (a stalled disk)
    monkeypatch.setattr(access_log, "MAX_PENDING", 3)
    log = AccessLog(str(tmp_path / "b.jsonl"))
    for _ in range(5):
        log.record("v2-http", "infer", "m", "INVALID_ARGUMENT", 1, 0.0, message="bad")
    log.close()
    got = lines(tmp_path / "b.jsonl")
    assert [g.get("code") for g in got[:3]] == ["INVALID_ARGUMENT"] * 3 and got[3]["dropped_lines"] == 2

    # Each flush reports the drops since the one before, once (the loop counts, the writer reports: no reset
    # that could lose an increment made between its read and its write).
    log = AccessLog(str(tmp_path / "c.jsonl"))
    for _ in range(5):
        log.record("v2-http", "infer", "m", "INVALID_ARGUMENT", 1, 0.0)
    log._flush()
    for _ in range(4):
        log.record("v2-http", "infer", "m", "INVALID_ARGUMENT", 1, 0.0)
    log.close()
    assert [g["dropped_lines"] for g in lines(tmp_path / "c.jsonl") if "dropped_lines" in g] == [2, 1]
    assert log.dropped == 3


def _wait(predicate, timeout_s=5.0):
    from tests.server.helpers import wait_for

    return wait_for(predicate, timeout_s)


def test_a_refused_token_is_written_on_both_sides(tiny_repo, tmp_path):
    log = tmp_path / "access.jsonl"
    with running_server(tiny_repo, access_log=str(log), auth_token="right") as (app, target):
        with Client(target, token="wrong") as c:
            with pytest.raises(grpc.RpcError) as e:
                c.classify(png(images(1)[0]))
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        status = http(f"http://127.0.0.1:{app.http_port}/v2/models/tiny/infer", "POST", {"inputs": []},
                      headers={"Authorization": "Bearer wrong"})[0]
    assert status == 401
    got = lines(log)
    assert [(g["surface"], g["method"], g["code"]) for g in got] == [
        ("auxnet.v1", "Classify", "UNAUTHENTICATED"), ("v2-http", "POST /v2/models/tiny/infer", "UNAUTHENTICATED")]
    assert got[1]["model"] == "tiny" and all("bearer token" in g["message"] and g["peer"] for g in got)
