"""KServe's V1 data plane (server/kserve_v1.py) on a real server: the model list and readiness, every instance form
(TensorFlow Serving's {"b64"}, a named input with a key, TorchServe's {"data"}, the columnar "inputs", pixel arrays)
answered as the Open Inference Protocol answers the same images, early-exit parameters and top_k, every refusal by
name in KServe's {"error"} form, its own surface in the metrics, the readiness path open to probes, and fuzzed bodies
never answered 500."""

import base64
import json

import numpy as np
import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.v2.http import is_probe
from tests.server.helpers import images, png
from tests.server.test_serving import metric
from tests.server.v2_helpers import http, v2_server

MODEL = "tiny"
IMAGES = images(3, seed=7)
FILES = [png(a) for a in IMAGES]
B64 = [base64.b64encode(f).decode() for f in FILES]


@pytest.fixture(scope="module")
def served(tiny_repo):
    with v2_server(tiny_repo) as (app, _, url):
        yield app, url


def predict(url: str, body, model: str = MODEL) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _, text = http(f"http://{url}/v1/models/{model}:predict", "POST", data)
    return status, json.loads(text)


def v2_answers(url: str, params: dict | None = None) -> dict:
    """The Open Inference Protocol's answers for FILES: {output name: data}."""
    status, _, text = http(f"http://{url}/v2/models/{MODEL}/infer", "POST", {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [3], "parameters": {"content_type": "base64"}, "data": B64}],
        "parameters": params or {},
        "outputs": [{"name": n} for n in ("label", "confidence", "probabilities", "exit_index", "stop_reason")]})
    assert status == 200, text
    return {o["name"]: o["data"] for o in json.loads(text)["outputs"]}


def test_the_model_list_and_readiness(served):
    app, url = served
    assert http(f"http://{url}/v1/models")[::2] == (200, b'{"models": ["tiny"]}')
    status, _, text = http(f"http://{url}/v1/models/{MODEL}")
    assert (status, json.loads(text)) == (200, {"name": MODEL, "ready": True})
    status, _, text = http(f"http://{url}/v1/models/nope")
    assert status == 404 and "model 'nope' is not loaded; loaded: ['tiny']" in json.loads(text)["error"]


def explain(url: str, body) -> tuple[int, dict]:
    status, _, text = http(f"http://{url}/v1/models/{MODEL}:explain", "POST", json.dumps(body).encode())
    return status, json.loads(text)


@pytest.mark.parametrize("params", [{}, {"calibrated_policy": True}, {"min_confidence": 0.5}, {"max_exit": 0},
                                    {"min_confidence": 0.99, "top_k": 1}])
def test_explain_gives_every_exits_answer_and_predict_s_under_the_request_s_rule(served, params):
    """:explain runs each image through every exit: each exit's answer is :predict's with max_exit there (the
    progressive answers), the policy's verdicts match where the calibrated policy stops, and `predictions` are
    :predict's own under the same parameters, keys echoed."""
    app, url = served
    body = {"instances": [{"b64": b, "key": f"k{i}"} for i, b in enumerate(B64)], "parameters": params}
    status, doc = explain(url, body)
    assert status == 200, doc
    _, plain = predict(url, body)
    fields = ("class_index", "exit_index", "exit_layer", "stop_reason", "key")
    assert [{f: p[f] for f in fields} for p in doc["predictions"]] == [{f: p[f] for f in fields} for p in plain["predictions"]]
    assert [p["probability"] for p in doc["predictions"]] == pytest.approx([p["probability"] for p in plain["predictions"]], abs=1e-6)
    engine = app.engines[MODEL]
    _, policy = predict(url, {"instances": [{"b64": b} for b in B64], "parameters": {"calibrated_policy": True}})
    for i, e in enumerate(doc["explanations"]):
        assert e["key"] == f"k{i}" and e["computed_to_exit"] == 1 and e["ended_by"] == "final"
        assert [x["exit_index"] for x in e["exits"]] == [0, 1]
        assert e["rule_stop_exit"] == doc["predictions"][i]["exit_index"]
        assert e["policy_stop_exit"] == policy["predictions"][i]["exit_index"]
        first = e["exits"][0]
        assert first["policy_threshold"] == engine.policy_threshold(0) and e["exits"][1]["policy_threshold"] is None
        assert first["policy_stops"] == (first["policy_score"] >= first["policy_threshold"])
        for x in e["exits"]:
            _, at = predict(url, {"instances": [{"b64": B64[i]}], "parameters": {"max_exit": x["exit_index"]}})
            assert x["class_index"] == at["predictions"][0]["class_index"]
            assert x["probability"] == pytest.approx(at["predictions"][0]["probability"], abs=1e-6)


def test_explain_refuses_a_budget_and_what_predict_refuses(served):
    _, url = served
    status, doc = explain(url, {"instances": [{"b64": B64[0]}], "parameters": {"budget_ms": 5}})
    assert status == 400 and doc["error"] == ("parameter 'budget_ms' does not apply to :explain, which runs every exit of "
                                              "each image; send it to :predict")
    assert explain(url, {"instances": []}) == (400, {"error": "'instances' must be a non-empty list of images"})
    status, doc = explain(url, {"instances": [{"b64": B64[0]}], "parameters": {"max_exit": 9}})
    assert status == 400 and "max_exit 9 does not exist" in doc["error"]


def test_every_instance_form_answers_as_the_open_inference_protocol(served):
    app, url = served
    expected = v2_answers(url)
    probs = np.array(expected["probabilities"]).reshape(3, -1)
    forms = [
        {"instances": [{"b64": b} for b in B64]},  # TensorFlow Serving's binary form
        {"instances": [{"image_bytes": {"b64": b}, "key": f"k{i}"} for i, b in enumerate(B64)]},  # a named input, keys
        {"instances": [{"data": b} for b in B64]},  # TorchServe's KServe wrapper
        {"inputs": [{"b64": b} for b in B64]},  # columnar
        {"inputs": {"image_bytes": [{"b64": b} for b in B64]}, "signature_name": "serving_default"},
    ]
    classes = app.engines[MODEL].info.classes
    for body in forms:
        status, doc = predict(url, body)
        assert status == 200, doc
        got = doc["predictions"]
        assert [p["class_index"] for p in got] == expected["label"]
        assert [p["class"] for p in got] == [classes[c] for c in expected["label"]]
        assert [p["exit_index"] for p in got] == expected["exit_index"] and [p["stop_reason"] for p in got] == expected["stop_reason"]
        assert np.allclose([p["probabilities"] for p in got], probs, atol=1e-6)
        assert [p["probability"] for p in got] == pytest.approx(expected["confidence"], abs=1e-6)
        assert [p.get("key") for p in got] == (["k0", "k1", "k2"] if "key" in json.dumps(body) else [None] * 3)


def test_pixel_arrays_answer_as_the_png_of_them(served):
    _, url = served
    status, doc = predict(url, {"instances": [a.tolist() for a in IMAGES]})
    assert status == 200, doc
    expected = np.array(v2_answers(url)["probabilities"]).reshape(3, -1)
    assert np.allclose([p["probabilities"] for p in doc["predictions"]], expected, atol=1e-6)


def test_early_exit_parameters_and_top_k(served):
    app, url = served
    status, doc = predict(url, {"instances": [{"b64": b} for b in B64], "parameters": {"max_exit": 0, "top_k": 2}})
    assert status == 200, doc
    expected = v2_answers(url, {"max_exit": 0})
    probs = np.array(expected["probabilities"]).reshape(3, -1)
    layer0 = app.engines[MODEL].info.exits[0].layer
    for p, row in zip(doc["predictions"], probs):
        assert (p["exit_index"], p["exit_layer"], p["stop_reason"]) == (0, layer0, "max_exit") and "probabilities" not in p
        order = np.argsort(-row, kind="stable")[:2]
        assert [t["class_index"] for t in p["top_k"]] == list(order)
        assert [t["probability"] for t in p["top_k"]] == pytest.approx(row[order], abs=1e-6)
    status, doc = predict(url, {"instances": [{"b64": B64[0]}], "parameters": {"budget_ms": 10000, "calibrated_policy": True}})
    assert status == 200 and doc["predictions"][0]["budget_met"] is True


@pytest.mark.parametrize("body, status, says", [
    (b"{not json", 400, "the body is not JSON"),
    ([{"b64": B64[0]}], 400, 'the body must be a JSON object: {"instances": [...]}'),
    ({"instances": [], "extra": 1}, 400, "unknown field 'extra'; valid: instances (or inputs), parameters, signature_name"),
    ({"instances": [{"b64": B64[0]}], "inputs": []}, 400, 'send the images as "instances" (a list) or "inputs", one of the two'),
    ({}, 400, 'send the images as "instances" (a list) or "inputs", one of the two'),
    ({"instances": []}, 400, "'instances' must be a non-empty list of images"),
    ({"inputs": {"a": [], "b": []}}, 400, "'inputs' as an object names one input (the images); got 2"),
    ({"instances": ["aGVsbG8="]}, 400, 'instance 0 is a string: send an image file as {"b64": "<base64>"}'),
    ({"instances": [{"b64": "***"}]}, 400, "instance 0: b64 is not base64"),
    ({"instances": [{"b64": 5}]}, 400, "instance 0: b64 must be a string of base64; got int"),
    ({"instances": [{"a": 1, "b": 2}]}, 400, "instance 0: an image file is {\"b64\": \"<base64>\"}"),
    ({"instances": [{"b64": B64[0]}, [[[0, 0, 0]]]]}, 400, "instance 1 is a pixel array and instance 0 an image file"),
    ({"instances": [[[[0, 0, 0]], [[0, 0]]]]}, 400, "instance 0: a pixel array must be [H][W][C] with rows of one length"),
    ({"instances": [[[[0.5, 0, 0]]]]}, 400, "instance 0: a pixel array must hold integers 0-255; got numbers with fractions"),
    ({"instances": [[[[0, 300, 0]]]]}, 400, "instance 0: pixel values must be 0-255; got 0..300"),
    ({"instances": [[[0, 0, 0]]]}, 400, "instance 0: a pixel array must be [H][W][C] of integers 0-255; got 2 dimensions"),
    ({"instances": [[[[0, 0, 0]]], [[[0, 0, 0], [0, 0, 0]]]]}, 400, "instance 1 has shape [1, 2, 3] where instance 0 has [1, 1, 3]"),
    ({"instances": [{"b64": B64[0]}], "parameters": {"budget": 5}}, 400, "unknown parameter 'budget'; valid: budget_ms"),
    ({"instances": [{"b64": B64[0]}], "parameters": {"top_k": 0}}, 400, "parameter 'top_k' must be a whole number from 1 to 10"),
    ({"instances": [{"b64": B64[0]}], "parameters": {"budget_ms": -1}}, 400, "budget_ms must be a positive number"),
    ({"instances": [{"b64": B64[0]}], "parameters": {"max_exit": 9}}, 400, "max_exit 9 does not exist"),
    ({"instances": [{"b64": B64[0]}], "signature_name": "predict"}, 400, "signature_name 'predict' does not exist"),
    ({"instances": [{"b64": base64.b64encode(b"not an image").decode()}]}, 400, "image bytes are not a supported image format"),
])
def test_bad_requests_are_refused_by_name(served, body, status, says):
    app, url = served
    before = metric(app, "auxnet_requests_total", model=MODEL, surface="kserve-v1", code="INVALID_ARGUMENT")
    got, doc = predict(url, body if isinstance(body, bytes) else json.dumps(body).encode())
    assert got == status and says in doc["error"], doc
    assert metric(app, "auxnet_requests_total", model=MODEL, surface="kserve-v1", code="INVALID_ARGUMENT") > before


def test_an_unknown_model_is_404_and_answers_are_counted_per_image(served):
    app, url = served
    status, doc = predict(url, {"instances": [{"b64": B64[0]}]}, model="nope")
    assert status == 404 and "model 'nope' is not loaded" in doc["error"]
    before = metric(app, "auxnet_requests_total", model=MODEL, surface="kserve-v1", code="OK")
    assert predict(url, {"instances": [{"b64": b} for b in B64]})[0] == 200
    assert metric(app, "auxnet_requests_total", model=MODEL, surface="kserve-v1", code="OK") == before + 3


def test_the_readiness_path_is_open_to_probes_and_predict_is_not():
    assert is_probe(make_mocked_request("GET", "/v1/models/tiny"))
    assert not is_probe(make_mocked_request("POST", "/v1/models/tiny:predict"))
    assert not is_probe(make_mocked_request("GET", "/v1/models"))
    assert is_probe(make_mocked_request("GET", "/v2/models/tiny/ready")) and is_probe(make_mocked_request("GET", "/ping"))


JSON = st.recursive(st.none() | st.booleans() | st.integers(-300, 300) | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=20)
FIELDS = st.fixed_dictionaries({}, optional={"instances": JSON, "inputs": JSON, "parameters": JSON, "signature_name": JSON,
                                             "key": JSON})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=FIELDS | JSON)
def test_fuzzed_bodies_are_answered_200_or_400_never_500(served, doc):
    status, answer = predict(served[1], json.dumps(doc).encode())
    assert status in (200, 400), answer
    assert ("predictions" in answer) if status == 200 else isinstance(answer["error"], str)


def test_explain_is_its_own_method_in_the_access_log(tiny_repo, tmp_path):
    from tests.server.helpers import wait_for
    from tests.server.test_access_log import lines

    log = tmp_path / "access.jsonl"
    with v2_server(tiny_repo, access_log=str(log)) as (_, _, url):
        assert explain(url, {"instances": [{"b64": B64[0]}]})[0] == 200
        assert predict(url, {"instances": [{"b64": B64[0]}]})[0] == 200
        assert http(f"http://{url}/explanations/{MODEL}", "PUT", FILES[0])[0] == 200  # TorchServe's
        assert wait_for(lambda: log.exists() and len(lines(log)) == 3, 5)
    assert [(g["surface"], g["method"], g["code"]) for g in lines(log)] == [
        ("kserve-v1", "explain", "OK"), ("kserve-v1", "predict", "OK"), ("torchserve", "explanations", "OK")]


def test_an_explanation_a_default_budget_ended_says_so(tiny_repo):
    """--default-budget-ms applies to :explain too (the request sent none): an image it stops at exit 0 is explained
    as far as it ran, the prediction is that exit's with stop reason budget."""
    from server.engine_config import EngineConfig

    with v2_server(tiny_repo, engine=EngineConfig(max_batch=16, default_budget_ms=0.001)) as (_, _, url):
        status, doc = explain(url, {"instances": [{"b64": B64[0]}]})
    assert status == 200, doc
    e, p = doc["explanations"][0], doc["predictions"][0]
    assert (e["computed_to_exit"], e["ended_by"], e["rule_stop_exit"]) == (0, "budget", 0)
    assert [x["exit_index"] for x in e["exits"]] == [0] and (p["exit_index"], p["stop_reason"]) == (0, "budget")
    assert e["policy_stop_exit"] == (0 if e["exits"][0]["policy_stops"] else None)  # none where the policy goes on


def test_explain_takes_pixel_arrays_as_the_png_of_them(served):
    _, url = served
    _, as_png = explain(url, {"instances": [{"b64": b} for b in B64[:2]]})
    status, as_pixels = explain(url, {"instances": [a.tolist() for a in IMAGES[:2]]})
    assert status == 200, as_pixels
    assert as_pixels["explanations"] == as_png["explanations"]  # PNG is lossless: the same pixels, the same answers


def test_explain_asks_room_for_all_its_images_before_any_runs(tiny_repo):
    """More images than the in-flight limit: refused by name before any is computed, as :predict refuses them."""
    from server.engine_config import EngineConfig

    with v2_server(tiny_repo, engine=EngineConfig(max_batch=16, max_inflight=2)) as (app, _, url):
        body = {"instances": [{"b64": b} for b in B64]}
        status, doc = explain(url, body)
        assert (status, doc) == predict(url, body)
        assert status == 400 and doc["error"].startswith("3 images in one request; at most 2")
        assert app.engines[MODEL].stats.to_triton(MODEL, "")["inference_count"] == 0  # nothing computed
