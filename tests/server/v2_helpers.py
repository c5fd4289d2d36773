"""Helpers for the Open Inference Protocol tests: a server with its HTTP port, plain HTTP calls."""

import json
import urllib.error
import urllib.request
from contextlib import contextmanager

from tests.server.conftest import running_server


@contextmanager
def v2_server(repo, **overrides):
    """(app, gRPC target, HTTP host:port) of a real server on free ports."""
    with running_server(repo, **overrides) as (app, target):
        yield app, target, f"127.0.0.1:{app.http_port}"


def http(url: str, method: str = "GET", body: bytes | dict | None = None, headers: dict | None = None,
         context=None) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one plain HTTP call; errors are returned, not raised."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=20, context=context) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def error_of(status_body) -> tuple[int, str]:
    status, _, body = status_body
    return status, json.loads(body)["error"]


def counted(app, model: str, code: str, surface: str | None = None) -> float:
    """auxnet_requests_total for a model and code, summed over surfaces unless one is named."""
    total = 0.0
    for family in app.metrics.registry.collect():
        for sample in family.samples:
            labels = sample.labels
            if (sample.name == "auxnet_requests_total" and labels["model"] == model and labels["code"] == code
                    and surface in (None, labels["surface"])):
                total += sample.value
    return total
