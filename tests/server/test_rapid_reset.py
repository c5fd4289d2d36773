"""HTTP/2 Rapid Reset (CVE-2023-44487) on the gRPC port, spoken with the h2 library on a raw socket:
--max-streams-per-connection reaches gRPC core and is advertised in the server's SETTINGS, streams past it are
refused, and after thousands of streams opened and reset at once the server still answers an ordinary client."""

import socket
import threading

import h2.config
import h2.connection
import h2.events
import h2.settings

from bench.rapid_reset import METHOD, Attacker
from server.app import CORE_HEADROOM_RPCS
from server.client import Client, classify_request
from server.connection_limits import grpc_options
from server.engine_config import EngineConfig
from tests.server.conftest import running_server
from tests.server.helpers import images, png, wait_for

IMAGE = png(images(1)[0])


def test_the_stream_limit_reaches_grpc_core_only_when_set():
    assert dict(grpc_options(448, 60.0, 100))["grpc.max_concurrent_streams"] == 100
    assert "grpc.max_concurrent_streams" not in dict(grpc_options(448, 60.0))


def connect(target: str):
    host, port = target.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def events_until(sock, conn, wanted, limit: int = 50) -> list:
    seen = []
    for _ in range(limit):
        data = sock.recv(1 << 16)
        if not data:
            break
        seen += conn.receive_data(data)
        sock.sendall(conn.data_to_send())
        if any(isinstance(e, wanted) for e in seen):
            break
    return seen


def advertised_streams(target: str) -> int:
    sock, conn = connect(target)
    try:
        settings = [e for e in events_until(sock, conn, h2.events.RemoteSettingsChanged)
                    if isinstance(e, h2.events.RemoteSettingsChanged)]
        return settings[0].changed_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS].new_value
    finally:
        sock.close()


def test_by_default_a_connection_may_hold_as_many_calls_as_the_server_admits(tiny_repo):
    with running_server(tiny_repo, engine=EngineConfig(max_batch=16, max_inflight=40)) as (_, target):
        assert advertised_streams(target) == 40 + CORE_HEADROOM_RPCS  # one model: gRPC core's concurrency limit


def test_the_server_advertises_its_stream_limit_and_refuses_streams_past_it(tiny_repo):
    with running_server(tiny_repo, max_streams_per_connection=4) as (_, target):
        sock, conn = connect(target)
        try:
            settings = [e for e in events_until(sock, conn, h2.events.RemoteSettingsChanged)
                        if isinstance(e, h2.events.RemoteSettingsChanged)]
            assert settings[0].changed_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS].new_value == 4
            # Five streams that each send only their headers (the request never ends, so none is let go): a client
            # that ignores the advertised limit has its fifth refused
            conn.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 100  # h2's own check would stop us
            conn.remote_settings.acknowledge()
            headers = [(":method", "POST"), (":scheme", "http"), (":path", METHOD), (":authority", target),
                       ("content-type", "application/grpc"), ("te", "trailers")]
            for _ in range(5):
                conn.send_headers(conn.get_next_available_stream_id(), headers)
            sock.sendall(conn.data_to_send())
            resets = [e for e in events_until(sock, conn, h2.events.StreamReset) if isinstance(e, h2.events.StreamReset)]
            assert [r.stream_id for r in resets] == [9]  # the fifth (client streams are odd: 1, 3, 5, 7, 9)
        finally:
            sock.close()


def test_after_a_rapid_reset_burst_an_ordinary_client_is_answered(tiny_repo):
    with running_server(tiny_repo, max_streams_per_connection=100) as (app, target):
        stop = threading.Event()
        attacker = Attacker(target, classify_request(IMAGE).SerializeToString(), stop)
        attacker.start()
        assert wait_for(lambda: attacker.streams >= 3000, timeout_s=60)
        stop.set()
        attacker.join(10)
        with Client(target, retries=0) as c:
            answer = c.classify(IMAGE)
        assert answer.model == "tiny" and answer.confidence > 0 and not attacker.errors
