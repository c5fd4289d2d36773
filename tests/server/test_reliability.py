"""Bad input fuzzed, deadlines and cancellation, SIGTERM under load, reload without loss, refusal of bad
repositories at start-up (issue 6)."""

import io
import json
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from protos.auxnet.v1 import inference_pb2 as pb
from server.client import Client, classify_request
from tests.server.conftest import running_server
from tests.server.helpers import images, png, start_server_process, wait_for
from tests.server.test_serving import metric

GOOD = images(1, seed=42)[0]


def encode(a, fmt, **kw):
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_with_size(width, height):
    """A PNG whose header declares width x height (with a valid CRC) but holds almost no data."""
    data = bytearray(png(GOOD))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def raw(data, h, w, c, pixel_type=pb.PIXEL_TYPE_UINT8):
    return pb.ClassifyRequest(raw=pb.RawImage(data=data, height=h, width=w, channels=c, pixel_type=pixel_type))


def truncated(fmt, fraction):
    e = encode(GOOD, fmt)
    return pb.ClassifyRequest(encoded=e[: int(len(e) * fraction)])


def corrupted(fmt, position, xor):
    e = bytearray(encode(GOOD, fmt))
    e[20 + position % (len(e) - 20)] ^= xor  # past the signature: the decoder must notice
    return pb.ClassifyRequest(encoded=bytes(e))


def other_mode(mode):
    """Valid images in the modes clients really send: gray, gray+alpha, RGBA, palette, 16-bit gray."""
    if mode == "I;16":
        a = np.asarray(Image.fromarray(GOOD).convert("L"), dtype=np.uint16) * 257
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")  # a uint16 array becomes a 16-bit PNG
        return pb.ClassifyRequest(encoded=buf.getvalue())
    buf = io.BytesIO()
    Image.fromarray(GOOD).convert(mode).save(buf, format="PNG")
    return pb.ClassifyRequest(encoded=buf.getvalue())


# Each strategy draws one malformed (or oddly-formed but valid) request.
bad_requests = st.one_of(
    st.binary(max_size=2000).map(lambda b: pb.ClassifyRequest(encoded=b)),
    st.builds(truncated, st.sampled_from(["PNG", "JPEG"]), st.floats(0.0, 0.95)),
    st.builds(corrupted, st.sampled_from(["PNG", "JPEG"]), st.integers(0, 10**6), st.integers(1, 255)),
    st.builds(lambda w, h: pb.ClassifyRequest(encoded=png_with_size(w, h)), st.integers(1, 2**31 - 1),
              st.integers(1, 2**31 - 1)),
    st.builds(other_mode, st.sampled_from(["L", "LA", "RGBA", "P", "I;16"])),
    st.builds(raw, st.binary(max_size=400), st.integers(0, 40), st.integers(0, 40), st.integers(0, 6)),
    st.builds(lambda v, i: raw(np.where(np.arange(3072) == i, v, 0.5).astype("<f4").tobytes(), 32, 32, 3,
                               pb.PIXEL_TYPE_FLOAT32),
              st.sampled_from([np.nan, np.inf, -np.inf, -3.0, 7.0]), st.integers(0, 3071)),
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: not (0 < v <= 3.6e6)).map(
        lambda v: classify_request(GOOD, budget_ms=v)),
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: not (0 <= v <= 1)).map(
        lambda v: classify_request(GOOD, min_confidence=v)),
    st.integers(11, 2**32 - 1).map(lambda k: classify_request(GOOD, top_k=k)),
)


def test_fuzzed_bad_input_gets_invalid_argument_and_server_keeps_serving(tiny_repo):
    with running_server(tiny_repo) as (app, target):
        client = Client(target)
        expected = client.classify(GOOD)
        rss_before = _rss_mb()
        seen = {"ok": 0, "invalid": 0}

        @settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(req=bad_requests, check_good=st.booleans())
        def one(req, check_good):
            try:
                r = client.stub.Classify(req, timeout=10)
                seen["ok"] += 1  # oddly formed but valid: gray, alpha, palette, 16-bit images
                assert r.class_name
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.code(), e.details())
                assert len(e.details()) > 10
                seen["invalid"] += 1
            if check_good:
                good = client.classify(GOOD)
                assert (good.label, good.exit_index) == (expected.label, expected.exit_index)

        one()
        # Unknown fields (a newer client) are ignored, as protobuf intends.
        extra = classify_request(png(GOOD)).SerializeToString() + b"\xf8\x07\x2a"  # field 127, varint 42
        assert client.stub.Classify.with_call(pb.ClassifyRequest.FromString(extra), timeout=5)[0].class_name
        client.close()
        assert seen["invalid"] > 500 and seen["ok"] > 0
        assert _rss_mb() - rss_before < 300, "memory grew under malformed input"
        assert metric(app, "auxnet_requests_total", code="INTERNAL") == 0


def _rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_expired_and_cancelled_requests_leave_queues_before_compute(tiny_repo):
    from server.engine_config import EngineConfig

    # The worker waits 400 ms for company before taking a batch: long enough for deadlines to pass.
    with running_server(tiny_repo, engine=EngineConfig(max_batch=16, max_queue_delay_ms=400)) as (app, target):
        with Client(target) as c:
            computed_before = metric(app, "auxnet_batch_size_sum", exit="0")
            with pytest.raises(grpc.RpcError) as e:
                c.classify(GOOD, timeout_s=0.1)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert wait_for(lambda: app.engines["tiny"].inflight == 0)
            call = c.stub.Classify.future(classify_request(GOOD), timeout=5)
            assert wait_for(lambda: app.engines["tiny"].inflight == 1)  # queued, waiting for company
            call.cancel()
            assert wait_for(lambda: metric(app, "auxnet_dropped_total", exit="0", reason="cancelled") == 1)
            assert metric(app, "auxnet_dropped_total", exit="0", reason="deadline") == 1
            assert metric(app, "auxnet_batch_size_sum", exit="0") == computed_before  # nothing was computed
            assert metric(app, "auxnet_requests_total", code="DEADLINE_EXCEEDED") == 1
            assert metric(app, "auxnet_requests_total", code="CANCELLED") == 1
            assert app.engines["tiny"].inflight == 0
            assert c.classify(GOOD).class_name


def test_an_http_client_that_closes_its_connection_cancels_its_request_before_compute(tiny_repo):
    """The Open Inference Protocol's HTTP surface as gRPC's above: a client gone (its own timeout, a closed
    socket) leaves the queue before compute, counted CANCELLED (aiohttp ran such a handler to its end before)."""
    from server.engine_config import EngineConfig

    pixels = np.zeros((1, 32, 32, 3), np.uint8)
    body = json.dumps({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": list(pixels.shape),
                                   "data": pixels.flatten().tolist()}]}).encode()
    head = b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    with running_server(tiny_repo, engine=EngineConfig(max_batch=16, max_queue_delay_ms=400)) as (app, target):
        computed_before = metric(app, "auxnet_batch_size_sum", exit="0")
        with socket.create_connection(("127.0.0.1", app.http_port)) as s:
            s.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            assert wait_for(lambda: app.engines["tiny"].inflight == 1)  # queued, waiting for company
        assert wait_for(lambda: metric(app, "auxnet_dropped_total", exit="0", reason="cancelled") == 1)
        assert metric(app, "auxnet_batch_size_sum", exit="0") == computed_before  # nothing was computed
        assert metric(app, "auxnet_requests_total", code="CANCELLED", surface="v2-http") == 1
        assert metric(app, "nv_inference_request_failure", reason="CANCELED") == 1
        with socket.create_connection(("127.0.0.1", app.http_port)) as s:  # and the next one is answered
            s.sendall(head + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            assert s.makefile("rb").readline().startswith(b"HTTP/1.1 200")
        assert app.engines["tiny"].inflight == 0


@pytest.mark.slow
def test_sigterm_under_load_answers_every_admitted_request(tiny_repo, tmp_path):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    proc, target, _ = start_server_process(tiny_repo, "--max-queue-delay-ms", "30", "--grace-s", "10",
                                           "--log-level", "INFO")
    codes, health_seen, stop = [], [], threading.Event()

    def send():
        with Client(target, timeout_s=10, retries=0) as c:
            while not stop.is_set():
                sent = time.time()
                try:
                    c.stub.Classify(classify_request(GOOD), timeout=10)
                    codes.append((sent, "OK"))
                except grpc.RpcError as e:
                    codes.append((sent, e.code().name))
                    time.sleep(0.01)

    def watch_health():
        stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(target))
        while not stop.is_set():
            try:
                health_seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status))
            except grpc.RpcError as e:
                health_seen.append(e.code().name)
            time.sleep(0.005)

    threads = [threading.Thread(target=send) for _ in range(8)] + [threading.Thread(target=watch_health)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(15)
    elapsed = time.time() - t0
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(15)
    assert rc == 0 and elapsed < 10
    # A request reaches the server a little after the client sends it: 0.2 s of margin around the signal.
    before = [code for sent, code in codes if sent < t0 - 0.2]
    after = [code for sent, code in codes if sent >= t0 - 0.2]
    # Every request in flight at SIGTERM was admitted and is answered; later ones are refused UNAVAILABLE
    # (or, in the instant the port closes, CANCELLED by gRPC before any handler ran).
    assert len(before) > 10 and set(before) == {"OK"}, set(before)
    assert set(after) <= {"OK", "UNAVAILABLE", "CANCELLED"} and "UNAVAILABLE" in after, set(after)
    assert "stopped (all requests answered)" in proc.stderr.read()
    first_bad = next(i for i, s in enumerate(health_seen) if s != "SERVING")
    assert health_seen[first_bad] == "NOT_SERVING"  # health turns before the port closes


def test_startup_refuses_bad_repositories(tiny_repo, tmp_path):
    def broken(name, damage):
        repo = tmp_path / name
        shutil.copytree(tiny_repo / "tiny", repo / "tiny")
        damage(repo / "tiny")
        return repo

    def edit_manifest(f):
        return lambda d: (d / "manifest.json").write_text(json.dumps(f(json.loads((d / "manifest.json").read_text()))))

    cases = {
        "missing": (lambda d: (d / "exit_1.onnx").unlink(), "exit_1.onnx: segment file named by the manifest is missing"),
        "tampered": (lambda d: (d / "exit_0.onnx").write_bytes((d / "exit_0.onnx").read_bytes()[:-5] + b"XXXXX"),
                     "exit_0.onnx: checksum mismatch"),
        "schema": (edit_manifest(lambda m: {**m, "schema_version": 7}), "schema version 7 unknown"),
        "chain": (edit_manifest(lambda m: {**m, "exits": [m["exits"][0], {**m["exits"][1], "input_shape": [3, 32, 32]}]}),
                  "the segments do not chain"),
    }
    for name, (damage, message) in cases.items():
        repo = broken(name, damage)
        out = subprocess.run([sys.executable, "-m", "server", "--repo", str(repo), "--port", "0", "--metrics-port", "-1"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, (name, out.stderr)
        assert "refusing to start" in out.stderr and message in out.stderr, (name, out.stderr)


@pytest.mark.slow
def test_reload_under_load_loses_nothing_and_refuses_a_broken_version(tiny_run, tiny_repo, tmp_path, caplog):
    from export.atomic import publish
    from export.build import export_model

    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo, symlinks=True)
    with running_server(repo, poll_s=0.2) as (app, target):
        old_version = app.engines["tiny"].info.version
        versions, errors, stop = [], [], threading.Event()

        def send():
            with Client(target, retries=0) as c:
                while not stop.is_set():
                    try:
                        versions.append(c.classify(GOOD).model_version)
                    except grpc.RpcError as e:
                        errors.append((e.code().name, e.details()))

        threads = [threading.Thread(target=send) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        export_model(str(tiny_run), str(repo), "tiny", measure=False, log=lambda *a: None)  # a new version
        deadline = time.time() + 30
        while app.engines["tiny"].info.version == old_version and time.time() < deadline:
            time.sleep(0.1)
        new_version = app.engines["tiny"].info.version
        time.sleep(2.0)  # keep the load on across the old version's retirement
        stop.set()
        for t in threads:
            t.join(10)
        assert new_version != old_version and errors == []
        assert old_version in versions and new_version in versions
        assert versions.index(new_version) > 0 and versions[-1] == new_version

        # A broken version: published atomically, but its segment does not match the checksum.
        staging = repo / ".versions" / "broken-staging"
        shutil.copytree(repo / "tiny", staging)
        (staging / "exit_0.onnx").write_bytes(b"not onnx")
        with caplog.at_level("ERROR", logger="auxnet.server"):
            publish(repo, "tiny", staging)
            assert wait_for(lambda: metric(app, "auxnet_model_reloads_total", result="refused") == 1)
        assert any("refusing new version" in r.getMessage() and "checksum mismatch" in r.getMessage()
                   for r in caplog.records)
        with Client(target) as c:
            assert c.classify(GOOD).model_version == new_version
        assert metric(app, "auxnet_model_reloads_total", result="ok") == 1
        assert metric(app, "auxnet_model_reloads_total", result="refused") == 1
