"""Serving replicas (issue 7): one client, two server processes, round robin, retries on UNAVAILABLE."""

import signal
import threading
import time

import grpc
import pytest

from server.client import Client
from tests.server.helpers import images, requests_ok, start_server_process


@pytest.mark.slow
def test_two_replicas_share_traffic_and_a_killed_one_loses_nothing(tiny_repo, tmp_path):
    (a, target_a, metrics_a), (b, target_b, metrics_b) = (start_server_process(tiny_repo) for _ in range(2))
    try:
        targets = f"{target_a},{target_b}"
        imgs = images(8)
        with Client(targets, retries=4) as c:
            for i in range(40):
                assert c.classify(imgs[i % 8]).class_name
            assert requests_ok(metrics_a) > 5 and requests_ok(metrics_b) > 5  # both replicas served

            answered, failed, stop = [], [], threading.Event()

            def send():
                while not stop.is_set():
                    try:
                        answered.append(c.classify(imgs[len(answered) % 8], timeout_s=10).label)
                    except grpc.RpcError as e:
                        failed.append(e.code().name)

            threads = [threading.Thread(target=send) for _ in range(4)]
            for t in threads:
                t.start()
            time.sleep(1.0)
            a.send_signal(signal.SIGKILL)  # no drain: in-flight calls on A fail and are retried on B
            a.wait(10)
            before = len(answered)
            time.sleep(1.5)
            stop.set()
            for t in threads:
                t.join(15)
        assert failed == [], failed
        assert len(answered) > before > 0  # traffic went on after the kill
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(20)
