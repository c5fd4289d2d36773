"""server/connection_limits.py: a cap per port, idle connections closed, the open-file limit raised. A flood of
half-open connections to one port must leave the other ports serving (before: an HTTP flood took every file
descriptor and new gRPC connections failed for every client)."""

import socket
import subprocess
import sys
import time

import pytest

from server.client import Client
from server.connection_limits import (
    DEFAULT_MAX_CONNECTIONS,
    HANDSHAKE_TIMEOUT_S,
    RESERVED_FILES,
    ConnectionGuard,
    grpc_options,
    per_port_cap,
)
from server.engine_config import EngineConfig
from tests.server.helpers import images, png, wait_for
from tests.server.v2_helpers import http, v2_server


def test_each_port_gets_the_requested_cap_within_the_open_files_it_may_use():
    assert per_port_cap(0, 1 << 20, 2) == DEFAULT_MAX_CONNECTIONS
    assert per_port_cap(100, 1 << 20, 2) == 100
    assert per_port_cap(0, 1024, 2) == (1024 - RESERVED_FILES) // 2 == 448  # the common default soft limit
    assert per_port_cap(10_000, 1024, 1) == 1024 - RESERVED_FILES


def test_grpc_core_gets_the_cap_a_handshake_timeout_and_the_idle_timeout():
    assert dict(grpc_options(448, 60.0)) == {"grpc.max_allowed_incoming_connections": 448,
                                             "grpc.server_handshake_timeout_ms": int(1000 * HANDSHAKE_TIMEOUT_S),
                                             "grpc.max_connection_idle_ms": 60_000}
    assert "grpc.max_connection_idle_ms" not in dict(grpc_options(448, 0.0))


def test_the_soft_open_file_limit_is_raised_to_the_hard_one():
    code = ("import resource; from server.connection_limits import raise_open_file_limit; "
            "print(raise_open_file_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    out = subprocess.run(["prlimit", "--nofile=256:4096", sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["4096", "4096"]


class FakeTransport:
    def __init__(self):
        self.closed = self.aborted = False

    def close(self):
        self.closed = True

    def abort(self):
        self.aborted = True


def test_the_guard_refuses_past_its_cap_and_closes_only_connections_without_a_request_in_progress():
    refused, counts = [], []
    guard = ConnectionGuard(2, 10.0, on_refused=lambda: refused.append(1), on_count=counts.append)
    a, b, c = FakeTransport(), FakeTransport(), FakeTransport()
    assert guard.admit(a) and guard.admit(b) and not guard.admit(c)
    assert c.aborted and refused == [1] and counts == [1, 2]
    guard.request_started(a)  # a request in progress on a: never idle, however long it runs
    now = time.monotonic()
    assert guard.sweep(now + 5) == 0
    assert guard.sweep(now + 11) == 1 and b.closed and not a.closed
    guard.closed(b)  # (what closing it leads to: the transport's connection_lost)
    guard.request_ended(a)
    assert guard.sweep(time.monotonic() + 9) == 0 and guard.sweep(time.monotonic() + 11) == 1 and a.closed
    guard.closed(a)
    assert counts == [1, 2, 1, 0] and not guard.open


def half_open(port: int, n: int, first_bytes: bytes) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(first_bytes)
        socks.append(s)
    return socks


def closed_by_server(s: socket.socket, within_s: float) -> bool:
    """Whether the server ends the connection within the time (what it sends first, a gRPC server's SETTINGS
    frame, is read past)."""
    deadline = time.monotonic() + within_s
    try:
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            if s.recv(4096) == b"":
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        pass
    return False


@pytest.mark.slow
def test_a_flood_of_half_open_http_connections_is_capped_timed_out_and_leaves_grpc_serving(tiny_repo):
    with v2_server(tiny_repo, engine=EngineConfig(max_batch=16), max_connections=8, idle_timeout_s=1.5) as (app, target, url):
        socks = half_open(app.http_port, 20, b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: a\r\n")
        try:
            assert wait_for(lambda: app.metrics.http_connections_refused._value.get() == 12, 10)
            assert sum(closed_by_server(s, 0.2) for s in socks[8:]) == 12  # past the cap: closed on arrival
            with Client(target, retries=0) as c:  # the gRPC port is untouched by the HTTP side's flood
                assert c.classify(png(images(1)[0])).class_name
            assert all(closed_by_server(s, 5.0) for s in socks[:8])  # no complete header within the idle time
            assert app.metrics.http_connections_idle_closed._value.get() == 8
            assert http(f"http://{url}/v2/health/ready")[0] == 200  # and the port serves again
        finally:
            for s in socks:
                s.close()


@pytest.mark.slow
def test_a_flood_of_half_open_grpc_connections_is_capped_and_leaves_http_and_health_serving(tiny_repo):
    with v2_server(tiny_repo, engine=EngineConfig(max_batch=16), max_connections=8, health_port=0) as (app, target, url):
        socks = half_open(app.port, 20, b"PRI * HTTP/2.0\r\n")
        try:
            assert sum(closed_by_server(s, 2.0) for s in socks[8:]) == 12  # gRPC core refuses past the cap
            assert http(f"http://{url}/v2/health/ready")[0] == 200
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            with Client(f"127.0.0.1:{app.health_port}", retries=0) as h:
                assert health_pb2_grpc.HealthStub(h.channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
            # the ones it took never finish their handshake: dropped after HANDSHAKE_TIMEOUT_S, and it serves again
            assert all(closed_by_server(s, HANDSHAKE_TIMEOUT_S + 5) for s in socks[:8])
            with Client(target, retries=0) as c:
                assert c.classify(png(images(1)[0])).class_name
        finally:
            for s in socks:
                s.close()


@pytest.mark.slow
def test_a_flood_of_the_metrics_port_holds_a_few_threads_and_is_timed_out(tiny_repo, monkeypatch):
    import threading
    import urllib.request

    from server import metrics_http

    monkeypatch.setattr(metrics_http._QuietHandler, "timeout", 1.0)
    with v2_server(tiny_repo, engine=EngineConfig(max_batch=16)) as (app, target, url):
        before = threading.active_count()
        socks = half_open(app.metrics_port, 200, b"GET /metrics HTTP/1.1\r\n")
        try:
            time.sleep(0.5)
            # prometheus_client's own server started a thread for each of them (200) and never timed one out
            assert threading.active_count() - before <= metrics_http.METRICS_CONNECTIONS
            with Client(target, retries=0) as c:
                assert c.classify(png(images(1)[0])).class_name
            assert all(closed_by_server(s, 5.0) for s in socks)  # refused at once, or dropped after the timeout
            text = urllib.request.urlopen(f"http://127.0.0.1:{app.metrics_port}/metrics", timeout=5).read().decode()
            assert "auxnet_requests_total" in text
        finally:
            for s in socks:
                s.close()
