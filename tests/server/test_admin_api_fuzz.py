"""Malformed bodies to the administrative HTTP endpoints (Triton's repository, logging, shared memory and trace
extensions), generated: every one gets 200 or a 4xx with a JSON error naming what was wrong, never a 500, nothing
outside the repository is loaded, no file is named, and the server keeps serving."""

import json
import uuid
from urllib.parse import quote

import tritonclient.utils.shared_memory as shm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server.v2_helpers import http, v2_server

values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)
KEYS = ["ready", "parameters", "log_info", "log_warnings", "log_errors", "log_verbose_level", "log_format", "log_file",
        "key", "offset", "byte_size", "unload_dependents", "config", "trace_level", "trace_rate", "trace_file", ""]
bodies = st.one_of(st.dictionaries(st.sampled_from(KEYS), values, max_size=4), values,
                   st.binary(max_size=40).map(lambda b: ("raw", b)))
NAMES = st.sampled_from(["tiny", "nope", "..", ".versions", "x" * 200, "t%2Finy", "%00", "tiny.json", "é"])
PATHS = ["/v2/repository/index", "/v2/repository/models/{name}/load", "/v2/repository/models/{name}/unload",
         "/v2/logging", "/v2/systemsharedmemory/region/{name}/register", "/v2/systemsharedmemory/region/{name}/unregister",
         "/v2/systemsharedmemory/unregister", "/v2/trace/setting", "/v2/models/{name}/trace/setting"]


def test_fuzzed_admin_bodies_are_refused_by_name_and_the_server_keeps_serving(tiny_repo, tmp_path):
    key = f"/auxnet-fuzz-{uuid.uuid4().hex[:8]}"
    region = shm.create_shared_memory_region("fuzz", key, 64)
    statuses = {}
    try:
        with v2_server(tiny_repo, model_control="explicit", allow_client_shm=True) as (app, target, url):
            @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
            @given(st.sampled_from(PATHS), NAMES, bodies)
            def send(path, name, body):
                data = body[1] if isinstance(body, tuple) else json.dumps(body).encode()
                status, _, text = http(f"http://{url}{path.format(name=quote(name, safe='%'))}", "POST", data)
                statuses[status] = statuses.get(status, 0) + 1
                assert status in (200, 400, 404, 405, 429), (path, name, body, status, text[:300])
                if status != 200:
                    assert json.loads(text)["error"], text
            send()
            assert set(app.engines) <= {"tiny"}  # nothing but the repository's model could be loaded
            assert app.log_control.settings()["log_file"] == ""
            assert http(f"http://{url}/v2/health/ready")[0] == 200
            assert http(f"http://{url}/v2/repository/models/tiny/load", "POST", b"")[0] == 200
            ok = http(f"http://{url}/v2/models/tiny/infer", "POST", {"inputs": [{"name": "pixels", "datatype": "UINT8",
                                                                                   "shape": [1, 32, 32, 3], "data": [0] * 3072}]})
            assert ok[0] == 200, ok[2][:300]
    finally:
        shm.destroy_shared_memory_region(region)
    assert statuses.get(400, 0) > 100 and statuses.get(200, 0) > 0, statuses
