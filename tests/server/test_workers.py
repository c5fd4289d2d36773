"""`python -m server --workers 2`: one port, two processes, metrics summed, drain on SIGTERM, a dead worker
replaced (issue 12)."""

import base64
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from server.client import Client
from server.repository import load_manifest
from server.workers import CrashBackoff, stop_exit_code
from tests.server.helpers import images, png

ROOT = Path(__file__).resolve().parents[2]


def start_workers(repo, *extra, workers=2):
    port_file = Path(tempfile.mkdtemp()) / "ports"
    proc = subprocess.Popen([sys.executable, "-m", "server", "--repo", str(repo), "--workers", str(workers), "--threads", "1",
                             "--port", "0", "--metrics-port", "0", "--health-port", "0", "--http-port", "0", "--port-file", str(port_file),
                             "--log-level", "WARNING", *extra], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (port_file.exists() and port_file.read_text().strip()):
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "workers did not start"
        time.sleep(0.1)
    port, metrics, health, http, *pids = (int(v) for v in port_file.read_text().split())
    return proc, port, metrics, health, http, pids, port_file


def samples(metrics_port, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


@pytest.mark.slow
def test_two_workers_share_the_port_sum_metrics_drain_and_are_replaced(tiny_repo):
    proc, port, mport, hport, http_port, pids, _ = start_workers(tiny_repo)
    try:
        assert len(pids) == 2 and all(Path(f"/proc/{p}").exists() for p in pids)
        # Both workers listen on the same port (SO_REUSEPORT).
        for pid in pids:
            inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
            assert any(i.startswith("socket:") for i in inodes)
        sent = 0
        for i in range(12):  # new connections: the kernel spreads them over the workers
            with Client(f"127.0.0.1:{port}") as c:
                for im in images(3, seed=i):
                    assert c.classify(png(im)).class_name
                    sent += 1
        for i in range(6):  # the Open Inference Protocol's HTTP port is shared the same way
            body = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters":
                                           {"content_type": "base64"}, "data": [base64.b64encode(png(images(1, seed=i)[0])).decode()]}]})
            req = urllib.request.Request(f"http://127.0.0.1:{http_port}/v2/models/tiny/infer", body.encode(), method="POST")
            with urllib.request.urlopen(req, timeout=10) as r:
                assert json.loads(r.read())["outputs"][0]["name"] == "label"
            sent += 1
        ok = sum(s.value for s in samples(mport, "auxnet_requests_total") if s.labels["code"] == "OK")
        assert ok == sent  # one /metrics for all workers
        info = samples(mport, "auxnet_model_info")
        assert info and info[0].labels["model"] == "tiny" and info[0].labels["precision"] == "fp32"
        assert info[0].labels["policy_score"] == load_manifest(tiny_repo / "tiny").policy_score
        with grpc.insecure_channel(f"127.0.0.1:{hport}") as ch:
            assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING
        # A worker killed outright is replaced; the other keeps answering meanwhile. A connection that the
        # kernel had queued on the dead worker's socket is reset: the client sees UNAVAILABLE and reconnects.
        os.kill(pids[0], signal.SIGKILL)
        deadline, answered, reset = time.time() + 60, 0, 0
        while time.time() < deadline:
            try:
                with Client(f"127.0.0.1:{port}") as c:
                    answered += bool(c.classify(png(images(1)[0])).class_name)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE, e
                reset += 1
            children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            if len(children) == 2 and str(pids[0]) not in children and answered >= 5:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the killed worker was not replaced ({answered} answered, {reset} reset)")
        with Client(f"127.0.0.1:{port}") as c:
            assert all(c.classify(png(im)).class_name for im in images(4, seed=99))
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0
    assert not any(Path(f"/proc/{p}").exists() and "zombie" not in Path(f"/proc/{p}/status").read_text().lower()
                   for p in pids[1:])


def test_a_stop_that_reached_a_worker_before_its_handlers_counts_as_clean():
    assert stop_exit_code(-signal.SIGTERM) == 0 and stop_exit_code(-signal.SIGINT) == 0 and stop_exit_code(0) == 0
    assert stop_exit_code(-signal.SIGKILL) == -signal.SIGKILL and stop_exit_code(2) == 2  # real failures stay


@pytest.mark.slow
def test_stop_while_a_worker_is_being_replaced_exits_0(tiny_repo):
    """Found by CI on a loaded machine: SIGTERM while the supervisor was starting a replacement worker killed
    that worker before it had installed its handlers, and the supervisor exited 241 (-SIGTERM)."""
    proc, port, mport, hport, http_port, pids, _ = start_workers(tiny_repo)
    try:
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.time() + 30
        while time.time() < deadline:  # the replacement exists (a new child), still starting
            children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            if len(children) == 2 and str(pids[0]) not in children:
                break
            time.sleep(0.02)
        else:
            pytest.fail("no replacement worker was started")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, proc.stderr.read()[-2000:]


@pytest.mark.slow
def test_a_worker_past_its_memory_limit_is_replaced_while_requests_flow_and_none_is_lost(tiny_repo):
    """--recycle-rss-mb: every worker holds more than 1 MB, so each is replaced once it is --recycle-min-age-s old.
    A client on one channel keeps classifying throughout: every request is answered across replacements (the old
    worker's GOAWAY moves the channel; server.client.Client retries the rare call that grpc's shutdown cancels,
    grpc/grpc#41785); the old worker drains and exits 0; the supervisor counts the recycles on /metrics."""
    proc, port, mport, hport, _, pids, port_file = start_workers(tiny_repo, "--recycle-rss-mb", "1", "--recycle-min-age-s",
                                                                 "2", workers=1)
    seen, answered, errors, health = [pids[0]], 0, [], collections.Counter()
    try:
        with Client(f"127.0.0.1:{port}") as c, grpc.insecure_channel(f"127.0.0.1:{hport}") as hc:
            probe = health_pb2_grpc.HealthStub(hc)
            deadline = time.time() + 90
            while len(seen) < 3 and time.time() < deadline:
                try:
                    answered += bool(c.classify(png(images(1, seed=answered)[0])).class_name)
                except grpc.RpcError as e:
                    errors.append(f"{e.code().name}: {e.details()}")
                try:  # the health port is shared too: a probe must never see the old worker's NOT_SERVING
                    health[health_pb2.HealthCheckResponse.ServingStatus.Name(
                        probe.Check(health_pb2.HealthCheckRequest(), timeout=5).status)] += 1
                except grpc.RpcError as e:  # a bare channel: grpc's shutdown may cancel a call (grpc/grpc#41785)
                    health[e.code().name] += 1
                now = int(port_file.read_text().split()[4])
                if now != seen[-1]:
                    seen.append(now)
        assert not errors, errors[:5]
        assert set(health) <= {"SERVING", "CANCELLED", "UNAVAILABLE"} and health["SERVING"] >= answered - 2, health
        assert len(seen) == 3, f"{len(seen) - 1} replacements in 90 s ({answered} answered)"
        assert answered >= 20
        assert sum(s.value for s in samples(mport, "auxnet_worker_recycles_total")) >= 2
        resident = samples(mport, "auxnet_worker_resident_bytes")
        assert [s.labels["slot"] for s in resident] == ["0"] and resident[0].value > 2**20
        ok = sum(s.value for s in samples(mport, "auxnet_requests_total") if s.labels["code"] == "OK")
        assert ok == answered  # the drained workers' counts stay in the sum
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    stderr = proc.stderr.read()
    assert code == 0, stderr[-2000:]
    assert "exited with code" not in stderr, stderr[-2000:]  # each old worker drained and exited 0 (else an ERROR)
    assert not any(Path(f"/proc/{p}").exists() and "zombie" not in Path(f"/proc/{p}/status").read_text().lower()
                   for p in seen)


@pytest.mark.slow
def test_a_replacement_that_cannot_start_leaves_the_old_worker_serving_and_is_tried_again(tiny_repo, tmp_path):
    """A bad version published while a worker is past its limit: its replacement refuses the repository (exit 2),
    so the old worker serves on (it refuses the bad version itself), the supervisor reaps the failed replacement,
    counts no recycle and tries again after --recycle-min-age-s; once the repository is good again the next try
    replaces the worker. Nothing a client sends is lost meanwhile."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo, symlinks=True)
    good = os.readlink(repo / "tiny")
    broken = repo / ".versions" / "tiny-broken"
    shutil.copytree(repo / good, broken)
    (broken / "exit_1.onnx").write_bytes((broken / "exit_1.onnx").read_bytes()[:-10])  # its checksum no longer matches

    def point_at(target: str) -> None:  # atomically, as export publishes
        (repo / "tiny.tmp").symlink_to(target)
        (repo / "tiny.tmp").replace(repo / "tiny")

    point_at(str(broken.relative_to(repo)))
    # started on the broken version, the worker itself would refuse: start on the good one, then break it at once
    point_at(good)
    proc, port, mport, _, _, pids, port_file = start_workers(repo, "--recycle-rss-mb", "1", "--recycle-min-age-s", "2",
                                                             "--poll-s", "0.5", workers=1)
    point_at(str(broken.relative_to(repo)))
    answered, errors = 0, []
    stderr_lines: list[str] = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        with Client(f"127.0.0.1:{port}") as c:
            deadline = time.time() + 60
            while sum("did not start" in line for line in stderr_lines) < 2 and time.time() < deadline:
                try:
                    answered += bool(c.classify(png(images(1, seed=answered)[0])).class_name)
                except grpc.RpcError as e:
                    errors.append(f"{e.code().name}: {e.details()}")
            failures = [line for line in stderr_lines if "did not start" in line]
            assert len(failures) >= 2, "".join(stderr_lines[-20:])
            assert "exit code 2" in failures[0], failures[0]
            assert int(port_file.read_text().split()[4]) == pids[0]  # the old worker still holds the slot
            assert sum(s.value for s in samples(mport, "auxnet_worker_recycles_total")) == 0
            point_at(good)
            while int(port_file.read_text().split()[4]) == pids[0] and time.time() < deadline + 60:
                try:
                    answered += bool(c.classify(png(images(1, seed=answered)[0])).class_name)
                except grpc.RpcError as e:
                    errors.append(f"{e.code().name}: {e.details()}")
            assert int(port_file.read_text().split()[4]) != pids[0], "the worker was not replaced once the repository was good"
            assert sum(s.value for s in samples(mport, "auxnet_worker_recycles_total")) >= 1
        assert not errors, errors[:5]
        assert answered >= 10
        assert any("refusing new version tiny-broken" in line for line in stderr_lines)  # the old worker's own refusal
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        reader.join(5)
    assert code == 0, "".join(stderr_lines[-20:])
    reaped = [line for line in stderr_lines if re.search(r"retired worker \(pid \d+\) exited with code 2", line)]
    assert len(reaped) >= len(failures), "".join(stderr_lines[-20:])  # each failed replacement was waited for


def test_a_worker_that_keeps_dying_young_is_restarted_after_a_doubling_delay():
    backoff = CrashBackoff(2)
    assert [backoff.delay(0, ran_s=3.0) for _ in range(8)] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff.delay(1, ran_s=3.0) == 0.0  # slots count apart
    assert backoff.delay(0, ran_s=CrashBackoff.STABLE_S) == 0.0  # a worker that ran long enough starts the count again
    assert backoff.delay(0, ran_s=1.0) == 1.0


@pytest.mark.slow
def test_a_worker_restarted_onto_a_broken_repository_backs_off_and_serves_once_it_is_good(tiny_repo, tmp_path):
    """The repository breaks under a running server (a bad version published; the worker itself refuses it and
    serves on), then the worker dies: each restart refuses the repository (exit 2), and the supervisor waits
    0, 1, 2, 4 ... s between them instead of starting workers in a hot loop. Once the repository is good, the
    next restart serves."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo, symlinks=True)
    good = os.readlink(repo / "tiny")
    broken = repo / ".versions" / "tiny-broken"
    shutil.copytree(repo / good, broken)
    (broken / "exit_0.onnx").write_bytes(b"not onnx")
    proc, port, _, _, _, pids, port_file = start_workers(repo, workers=2)
    stderr_lines: list[str] = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        (repo / "tiny.tmp").symlink_to(str(broken.relative_to(repo)))
        (repo / "tiny.tmp").replace(repo / "tiny")
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.time() + 60
        while not any("starting it again in 4 s" in line for line in stderr_lines) and time.time() < deadline:
            time.sleep(0.1)
        restarts = [re.search(r"starting it again( in \S+ s)?", line).group(0) for line in stderr_lines if "starting it again" in line]
        assert restarts == ["starting it again", "starting it again in 1 s", "starting it again in 2 s",
                            "starting it again in 4 s"], "".join(stderr_lines[-20:])
        (repo / "tiny.tmp").symlink_to(good)
        (repo / "tiny.tmp").replace(repo / "tiny")
        while len(port_file.read_text().split()) < 6 and time.time() < deadline + 30:
            time.sleep(0.1)
        now = [int(v) for v in port_file.read_text().split()[4:]]
        assert len(now) == 2 and pids[0] not in now and pids[1] in now, (pids, now)
        assert sum("starting it again" in line for line in stderr_lines) == 4  # the start on the good repository held
        with Client(f"127.0.0.1:{port}") as c:  # connections spread over both workers
            assert all(c.classify(png(image)).class_name for image in images(8))
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        reader.join(5)
    assert code == 0, "".join(stderr_lines[-20:])
