"""--max-connection-age-s: the server closes a client's connection after that long, the client reconnects by
itself (a new connection: a new source port, seen in the access log's peer), and no call fails. Behind a
headless Kubernetes service that reconnection is when a client re-resolves and finds replicas added since."""

import json
import time

import pytest

from server.client import Client
from tests.server.conftest import running_server
from tests.server.helpers import images, png


@pytest.mark.parametrize("age_s, reconnects", [(0.5, True), (0.0, False)])
def test_connections_are_recycled_without_failing_a_call(tiny_repo, tmp_path, age_s, reconnects):
    log = tmp_path / "access.jsonl"
    image = png(images(1)[0])
    with running_server(tiny_repo, access_log=str(log), max_connection_age_s=age_s, http_port=None) as (_, target):
        with Client(target) as c:
            for _ in range(8):  # 1.6 s of calls: past the 0.5 s age (+-10% jitter) at least twice
                assert c.classify(image).class_name
                time.sleep(0.2)
    peers = [json.loads(line)["peer"] for line in log.read_text().splitlines()]
    assert len(peers) == 8 and all(json.loads(line)["code"] == "OK" for line in log.read_text().splitlines())
    assert (len(set(peers)) >= 2) == reconnects, peers


def test_the_http_side_closes_a_keep_alive_connection_past_its_age(tiny_repo):
    import http.client

    with running_server(tiny_repo, max_connection_age_s=0.3) as (app, _):
        conn = http.client.HTTPConnection("127.0.0.1", app.http_port, timeout=10)
        headers = []
        for pause in (0.0, 0.0, 0.5, 0.0):  # the third request comes after the connection's age
            time.sleep(pause)
            conn.request("GET", "/v2/health/live")
            r = conn.getresponse()
            assert r.status == 200 and json.loads(r.read()) == {"live": True}
            headers.append(r.getheader("Connection"))
        conn.close()
    # Keep-alive until the age, then one "close"; http.client reconnects by itself and the new connection is young.
    assert [h == "close" for h in headers] == [False, False, True, False], headers
