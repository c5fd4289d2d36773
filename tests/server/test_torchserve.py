"""TorchServe's inference API (server/torchserve.py) on a real server: what TorchServe's clients send (the raw file
with PUT or POST, one multipart part) answered as its image classifier answers (top-k class -> probability, most
probable first) and equal to the Open Inference Protocol's probabilities for the same image; early-exit controls in
the query and where the answer stopped in headers; every refusal in TorchServe's error form, by name; counted under
its own surface; a client that closes its connection cancels its request; /ping without the token."""

import base64
import json
import socket
from urllib.parse import quote

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.engine_config import EngineConfig
from tests.server.conftest import running_server
from tests.server.helpers import images, png, wait_for
from tests.server.test_serving import metric
from tests.server.v2_helpers import http

MODEL = "tiny"
IMAGE = png(images(1)[0])


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, dict]:
    """A multipart/form-data body of these (field, bytes) parts, as curl -F or requests' files= build it."""
    boundary = "----auxnet-test-boundary"
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{field}.png"\r\n'
                    f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n" for field, data in files)
    return body + f"--{boundary}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def predict(url: str, body: bytes, query: str = "", method: str = "PUT", headers: dict | None = None):
    status, hdrs, text = http(f"http://{url}/predictions/{MODEL}{query}", method, body,
                              {"Content-Type": "application/octet-stream", **(headers or {})})
    return status, hdrs, json.loads(text)


def v2_probabilities(url: str) -> np.ndarray:
    status, _, text = http(f"http://{url}/v2/models/{MODEL}/infer", "POST", {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"content_type": "base64"},
                    "data": [base64.b64encode(IMAGE).decode()]}], "outputs": [{"name": "probabilities"}]})
    assert status == 200, text
    return np.array(json.loads(text)["outputs"][0]["data"], np.float32)


def test_a_torchserve_client_gets_the_top_five_as_the_open_inference_protocol_computes_them(tiny_repo):
    with running_server(tiny_repo) as (app, _):
        url = f"127.0.0.1:{app.http_port}"
        classes = app.engines[MODEL].info.classes
        expected = v2_probabilities(url)
        top = [classes[c] for c in np.argsort(-expected, kind="stable")[:5]]
        answers = [predict(url, IMAGE, method=m) for m in ("PUT", "POST")]
        body, form = multipart([("data", IMAGE)])
        answers.append(predict(url, body, method="POST", headers=form))
        for status, headers, doc in answers:
            assert status == 200 and list(doc) == top  # TorchServe's ImageClassifier: top 5, most probable first
            assert list(doc.values()) == pytest.approx([float(expected[classes.index(c)]) for c in top], abs=1e-6)
            assert headers["X-AuxNet-Stop-Reason"] == "final" and headers["X-AuxNet-Exit-Index"] == "1"
            assert headers["X-AuxNet-Exit-Layer"] == str(app.engines[MODEL].info.exits[1].layer)
        assert metric(app, "auxnet_requests_total", code="OK", surface="torchserve") == 3
        assert http(f"http://{url}/ping")[0] == 200 and json.loads(http(f"http://{url}/ping")[2]) == {"status": "Healthy"}


def test_early_exit_controls_ride_in_the_query_and_the_exit_in_the_headers(tiny_repo):
    with running_server(tiny_repo) as (app, _):
        url = f"127.0.0.1:{app.http_port}"
        status, headers, doc = predict(url, IMAGE, "?max_exit=0&top_k=2")
        assert status == 200 and len(doc) == 2
        assert (headers["X-AuxNet-Exit-Index"], headers["X-AuxNet-Stop-Reason"]) == ("0", "max_exit")
        status, headers, _ = predict(url, IMAGE, "?min_confidence=0")  # any confidence is enough: the first exit
        assert status == 200 and (headers["X-AuxNet-Exit-Index"], headers["X-AuxNet-Stop-Reason"]) == ("0", "confidence")
        status, headers, _ = predict(url, IMAGE, "?calibrated_policy=true&budget_ms=1000")
        assert status == 200 and headers["X-AuxNet-Budget-Met"] == "true"
        assert headers["X-AuxNet-Model-Version"] == app.engines[MODEL].info.version
        assert float(headers["X-AuxNet-Server-Latency-Ms"]) > 0


def test_every_refusal_is_named_in_torchserves_error_form_and_counted(tiny_repo):
    with running_server(tiny_repo) as (app, _):
        url = f"127.0.0.1:{app.http_port}"
        two = multipart([("data", IMAGE), ("data", IMAGE)])
        cases = [
            (http(f"http://{url}/predictions/nope", "PUT", IMAGE), 404, "ModelNotFoundException", "model 'nope' is not loaded"),
            (http(f"http://{url}/predictions/{MODEL}/v9", "PUT", IMAGE), 400, "BadRequestException", "not 'v9'"),
            (http(f"http://{url}/predictions/{MODEL}?budget=5", "PUT", IMAGE), 400, "BadRequestException",
             "unknown query parameter 'budget'; accepted: ['budget_ms', "),
            (http(f"http://{url}/predictions/{MODEL}?budget_ms=-1", "PUT", IMAGE), 400, "BadRequestException",
             "budget_ms must be a positive number"),
            (http(f"http://{url}/predictions/{MODEL}?budget_ms=nan", "PUT", IMAGE), 400, "BadRequestException",
             "query parameter 'budget_ms' must be a finite number"),
            (http(f"http://{url}/predictions/{MODEL}?max_exit=x", "PUT", IMAGE), 400, "BadRequestException",
             "query parameter 'max_exit' must be an integer; got 'x'"),
            (http(f"http://{url}/predictions/{MODEL}?max_exit=7", "PUT", IMAGE), 400, "BadRequestException",
             "max_exit 7 does not exist; valid: 0..1"),
            (http(f"http://{url}/predictions/{MODEL}?top_k=0", "PUT", IMAGE), 400, "BadRequestException", "top_k 0 is out of range"),
            (http(f"http://{url}/predictions/{MODEL}?top_k=1&top_k=2", "PUT", IMAGE), 400, "BadRequestException",
             "query parameter 'top_k' given 2 times"),
            (http(f"http://{url}/predictions/{MODEL}?calibrated_policy=yes", "PUT", IMAGE), 400, "BadRequestException",
             "must be true or false"),
            (http(f"http://{url}/predictions/{MODEL}", "PUT", b""), 400, "BadRequestException", "the request has no body"),
            (http(f"http://{url}/predictions/{MODEL}", "PUT", b"not an image"), 400, "BadRequestException",
             "not a supported image format"),
            (http(f"http://{url}/predictions/{MODEL}", "POST", two[0], two[1]), 400, "BadRequestException",
             "one image per request (as TorchServe's image classifier); this one has 2 parts"),
            (http(f"http://{url}/predictions/{MODEL}", "POST", b"--x\r\n", {"Content-Type": "multipart/form-data"}), 400,
             "BadRequestException", "the multipart body cannot be read"),
        ]
        for (status, _, text), want_status, kind, says in cases:
            doc = json.loads(text)
            assert (status, doc["code"], doc["type"]) == (want_status, want_status, kind) and says in doc["message"], doc
        assert metric(app, "auxnet_requests_total", code="INVALID_ARGUMENT", surface="torchserve") == len(cases) - 1
        assert metric(app, "auxnet_requests_total", code="NOT_FOUND", surface="torchserve") == 1
        assert predict(url, IMAGE)[0] == 200  # and it serves on


def test_ping_needs_no_token_and_predictions_do(tiny_repo):
    with running_server(tiny_repo, auth_token="s3cret-token") as (app, _):
        url = f"127.0.0.1:{app.http_port}"
        assert http(f"http://{url}/ping")[0] == 200
        assert http(f"http://{url}/predictions/{MODEL}", "PUT", IMAGE)[0] == 401
        status, _, _ = predict(url, IMAGE, headers={"Authorization": "Bearer s3cret-token"})
        assert status == 200


def test_a_torchserve_client_that_closes_its_connection_cancels_its_request_before_compute(tiny_repo):
    with running_server(tiny_repo, engine=EngineConfig(max_batch=16, max_queue_delay_ms=400)) as (app, _):
        computed_before = metric(app, "auxnet_batch_size_sum", exit="0")
        with socket.create_connection(("127.0.0.1", app.http_port)) as s:
            s.sendall(b"PUT /predictions/tiny HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(IMAGE) + IMAGE)
            assert wait_for(lambda: app.engines[MODEL].inflight == 1)
        assert wait_for(lambda: metric(app, "auxnet_requests_total", code="CANCELLED", surface="torchserve") == 1)
        assert metric(app, "auxnet_batch_size_sum", exit="0") == computed_before


def test_fuzzed_predictions_are_answered_or_refused_by_name_and_the_server_serves_on(tiny_repo):
    """Bodies of any bytes (a PNG cut or flipped somewhere, multipart with any boundary), query strings of any names
    and values: 200, or a 4xx in TorchServe's form naming what was wrong; never a 500."""
    keys = st.sampled_from(["budget_ms", "min_confidence", "max_exit", "calibrated_policy", "priority", "top_k", "", "x"])
    query = st.lists(st.tuples(keys, st.text(max_size=6)), max_size=3).map(
        lambda pairs: "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs) if pairs else "")
    png_mutated = st.tuples(st.integers(0, len(IMAGE) - 1), st.binary(min_size=1, max_size=4), st.booleans()).map(
        lambda m: IMAGE[:m[0]] if m[2] else IMAGE[:m[0]] + m[1] + IMAGE[m[0] + len(m[1]):])
    bodies = st.one_of(st.binary(max_size=64).map(lambda b: (b, "application/octet-stream")), png_mutated.map(lambda b: (b, "image/png")),
                       st.tuples(st.text("abcXYZ-_09", min_size=1, max_size=8), st.binary(max_size=32)).map(
                           lambda t: (b"--" + t[0].encode() + b"\r\n" + t[1], f"multipart/form-data; boundary={t[0]}")))
    statuses: dict[int, int] = {}
    with running_server(tiny_repo) as (app, _):
        url = f"127.0.0.1:{app.http_port}"

        @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
        @given(query, bodies, st.sampled_from(["PUT", "POST"]))
        def send(q, body, method):
            status, _, text = http(f"http://{url}/predictions/{MODEL}{q}", method, body[0], {"Content-Type": body[1]})
            statuses[status] = statuses.get(status, 0) + 1
            assert status in (200, 400), (q, body, status, text[:300])
            doc = json.loads(text)
            if status != 200:
                assert doc["code"] == status and doc["type"] == "BadRequestException" and doc["message"], doc

        send()
        assert statuses.get(400, 0) > 100, statuses
        assert predict(url, IMAGE)[0] == 200
        assert metric(app, "auxnet_requests_total", code="INTERNAL", surface="torchserve") == 0


def test_a_big_multipart_body_is_parsed_off_the_event_loop_and_answers_as_the_raw_file(tiny_repo):
    big = png(images(1, seed=3, size=200)[0])  # ~120 KB: past the size parsed on the loop
    assert len(big) > 64 * 1024
    with running_server(tiny_repo) as (app, _):
        url = f"127.0.0.1:{app.http_port}"
        body, form = multipart([("data", big)])
        status, _, from_form = predict(url, body, method="POST", headers=form)
        assert status == 200 and from_form == predict(url, big)[2]


def test_explanations_answer_as_kserve_explain_does_with_the_answer_in_the_headers(tiny_repo):
    """TorchServe's explanations API (server/explain.py): the same explanation as KServe V1's :explain of the same
    image and rule, where the rule stopped in the headers as /predictions gives them; its refusals in TorchServe's
    form; the token asked as for predictions."""
    with running_server(tiny_repo, auth_token="t") as (app, _):
        url, auth = f"127.0.0.1:{app.http_port}", {"Authorization": "Bearer t"}
        status, headers, doc = predict(url, IMAGE, "?calibrated_policy=true", headers=auth)
        assert status == 200
        status, hdrs, text = http(f"http://{url}/explanations/{MODEL}?calibrated_policy=true", "PUT", IMAGE,
                                  {"Content-Type": "application/octet-stream", **auth})
        assert status == 200, text
        mine = json.loads(text)
        _, _, kserve = http(f"http://{url}/v1/models/{MODEL}:explain", "POST",
                            {"instances": [{"b64": base64.b64encode(IMAGE).decode()}],
                             "parameters": {"calibrated_policy": True}}, auth)
        assert mine == json.loads(kserve)["explanations"][0]
        assert [x["exit_index"] for x in mine["exits"]] == [0, 1] and mine["rule_stop_exit"] == int(headers["X-AuxNet-Exit-Index"])
        for name in ("X-AuxNet-Exit-Index", "X-AuxNet-Stop-Reason", "X-AuxNet-Model-Version"):
            assert hdrs[name] == headers[name]
        status, _, text = http(f"http://{url}/explanations/{MODEL}?budget_ms=5", "PUT", IMAGE, auth)
        assert (status, json.loads(text)["type"]) == (400, "BadRequestException") and "'budget_ms'" in json.loads(text)["message"]
        status, _, text = http(f"http://{url}/explanations/nope", "PUT", IMAGE, auth)
        assert (status, json.loads(text)["type"]) == (404, "ModelNotFoundException")
        assert http(f"http://{url}/explanations/{MODEL}", "PUT", IMAGE)[0] == 401
