"""The Open Inference Protocol (KServe v2) driven by Triton's own clients (tritonclient.grpc and .http) and
plain HTTP: every RPC and endpoint, each input form and parameter, and the same answer as auxnet.v1
Classify (issue 11)."""

import base64
import json

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.grpc import service_pb2 as oip  # the specification's own stubs (package inference)
from tritonclient.grpc import service_pb2_grpc as oip_grpc
from tritonclient.utils import InferenceServerException

from server.client import Client
from server.decode import to_model_input
from tests.server.helpers import images, png, requests_ok
from tests.server.v2_helpers import error_of, http, v2_server

MODEL = "tiny"
OUTPUTS = ["label", "class_name", "confidence", "exit_index", "exit_layer", "stop_reason", "server_latency_ms", "budget_met"]


@pytest.fixture(scope="module")
def srv(tiny_repo):
    with v2_server(tiny_repo) as s:
        yield s


def bytes_input(module, encoded: list[bytes], shape=None):
    inp = module.InferInput("image", shape or [len(encoded)], "BYTES")
    inp.set_data_from_numpy(np.array(encoded, dtype=object).reshape(shape or [len(encoded)]))
    return inp


def array_input(module, name, a: np.ndarray, datatype):
    inp = module.InferInput(name, list(a.shape), datatype)
    inp.set_data_from_numpy(a)
    return inp


def results(r, names=OUTPUTS) -> dict:
    return {n: r.as_numpy(n) for n in names}


# --- health and metadata -------------------------------------------------------------------------------

@pytest.mark.parametrize("module", [tgrpc, thttp], ids=["grpc", "http"])
def test_health_and_metadata_through_tritonclient(srv, module):
    app, target, url = srv
    c = module.InferenceServerClient(target if module is tgrpc else url)
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready(MODEL)
    assert c.is_model_ready(MODEL, model_version=app.engines[MODEL].info.version)
    assert not c.is_model_ready("nope") and not c.is_model_ready(MODEL, model_version="v999")
    meta = c.get_server_metadata(as_json=True) if module is tgrpc else c.get_server_metadata()
    assert meta["name"] == "auxnet-serving" and "binary_tensor_data" in meta["extensions"]
    m = c.get_model_metadata(MODEL, as_json=True) if module is tgrpc else c.get_model_metadata(MODEL)
    assert m["name"] == MODEL and m["versions"] == [app.engines[MODEL].info.version]
    assert {i["name"]: i["datatype"] for i in m["inputs"]} == {"image": "BYTES", "pixels": "UINT8", "pixels_fp32": "FP32",
                                                                "input": "FP32"}
    n_classes = len(app.engines[MODEL].info.classes)
    outputs = {o["name"]: (o["datatype"], [int(d) for d in o["shape"]]) for o in m["outputs"]}
    assert outputs["probabilities"] == ("FP32", [-1, n_classes]) and outputs["label"] == ("INT64", [-1])
    assert outputs["stop_reason"][0] == "BYTES" and outputs["budget_met"][0] == "BOOL"
    with pytest.raises(InferenceServerException) as e:
        c.get_model_metadata("nope")
    assert "model 'nope' is not loaded" in e.value.message()
    assert e.value.status() == ("StatusCode.NOT_FOUND" if module is tgrpc else "404")


@pytest.mark.parametrize("module", [tgrpc, thttp], ids=["grpc", "http"])
def test_triton_model_config_for_tritons_clients(srv, module):
    """Not the protocol's, but what Triton's clients and tools read (max_batch_size, inputs, formats)."""
    app, target, url = srv
    c = module.InferenceServerClient(target if module is tgrpc else url)
    cfg = c.get_model_config(MODEL, as_json=True)["config"] if module is tgrpc else c.get_model_config(MODEL)
    engine = app.engines[MODEL]
    assert cfg["name"] == MODEL and int(cfg["max_batch_size"]) == engine.cfg.max_batch == 16
    inputs = {i["name"]: (i["data_type"], i.get("format", "FORMAT_NONE"), [int(d) for d in i["dims"]]) for i in cfg["input"]}
    assert inputs == {"image": ("TYPE_STRING", "FORMAT_NONE", [1]), "pixels": ("TYPE_UINT8", "FORMAT_NHWC", [-1, -1, -1]),
                      "pixels_fp32": ("TYPE_FP32", "FORMAT_NHWC", [-1, -1, -1]), "input": ("TYPE_FP32", "FORMAT_NCHW", [3, 32, 32])}
    assert all(i["optional"] for i in cfg["input"])
    outputs = {o["name"]: o for o in cfg["output"]}
    assert [int(d) for d in outputs["probabilities"]["dims"]] == [len(engine.info.classes)]
    assert outputs["label"]["data_type"] == "TYPE_INT64" and [int(d) for d in outputs["label"]["dims"]] == [1]
    assert cfg["parameters"]["exit_layers"]["string_value"] == ",".join(str(e.layer) for e in engine.info.exits)
    assert cfg["parameters"]["policy_score"]["string_value"] == engine.info.manifest["policy"]["score"]
    with pytest.raises(InferenceServerException) as e:
        c.get_model_config("nope")
    assert "model 'nope' is not loaded" in e.value.message()


def test_http_probes_and_unknown_paths(srv):
    _, _, url = srv
    assert http(f"http://{url}/v2/health/live")[0] == 200
    assert http(f"http://{url}/v2/health/ready")[0] == 200
    assert json.loads(http(f"http://{url}/v2/models/{MODEL}/ready")[2])["ready"] is True
    assert error_of(http(f"http://{url}/v2/models/nope/ready")) == (404, "model 'nope' is not loaded; loaded: ['tiny']")
    status, message = error_of(http(f"http://{url}/v2/nothing/here"))
    assert status == 404 and "no such endpoint: GET /v2/nothing/here" in message
    assert error_of(http(f"http://{url}/v2/models/{MODEL}/infer"))[0] == 405  # GET on a POST endpoint


# --- the same answer everywhere --------------------------------------------------------------------------

@pytest.mark.parametrize("params", [{}, {"calibrated_policy": True}, {"min_confidence": 0.3}, {"max_exit": 0}],
                         ids=["final", "policy", "min_confidence", "max_exit"])
def test_same_answer_through_v2_grpc_v2_http_json_and_classify(srv, params):
    _, target, url = srv
    imgs = images(4, seed=11)
    encoded = [png(a) for a in imgs]
    via_grpc = results(tgrpc.InferenceServerClient(target).infer(MODEL, [bytes_input(tgrpc, encoded)], parameters=params))
    via_http = results(thttp.InferenceServerClient(url).infer(MODEL, [bytes_input(thttp, encoded)], parameters=params))
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [4], "parameters": {"content_type": "base64"},
                        "data": [base64.b64encode(e).decode() for e in encoded]}], "parameters": params}
    status, headers, raw = http(f"http://{url}/v2/models/{MODEL}/infer", "POST", body)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    via_json = {o["name"]: o["data"] for o in json.loads(raw)["outputs"]}
    with Client(target) as c:
        classify = [c.classify(e, **params) for e in encoded]
    reason = {1: "confidence", 2: "budget", 3: "final", 4: "max_exit"}
    for i, want in enumerate(classify):
        for got in (via_grpc, via_http):
            assert int(got["label"][i]) == want.label and got["class_name"][i].decode() == want.class_name
            assert int(got["exit_index"][i]) == want.exit_index and int(got["exit_layer"][i]) == want.exit_layer
            assert got["stop_reason"][i].decode() == reason[want.stop_reason]
            assert got["confidence"][i] == pytest.approx(want.confidence, abs=1e-6)
            assert bool(got["budget_met"][i]) and got["server_latency_ms"][i] > 0
        assert via_json["label"][i] == want.label and via_json["class_name"][i] == want.class_name
        assert via_json["exit_index"][i] == want.exit_index and via_json["stop_reason"][i] == reason[want.stop_reason]
        assert via_json["confidence"][i] == pytest.approx(want.confidence, abs=1e-6)
    if "max_exit" in params:
        assert set(via_grpc["exit_index"]) == {0} and {s.decode() for s in via_grpc["stop_reason"]} <= {"max_exit", "confidence"}


def test_each_input_form_gives_the_answer_of_its_image(srv):
    app, target, url = srv
    info = app.engines[MODEL].info
    imgs = np.stack(images(3, seed=5))
    pixels = [("pixels", imgs, "UINT8"), ("pixels_fp32", imgs.astype(np.float32) / 255, "FP32"),
              ("input", np.stack([to_model_input(a, info.input_shape, info.mean, info.std) for a in imgs]), "FP32")]
    gc, hc = tgrpc.InferenceServerClient(target), thttp.InferenceServerClient(url)
    want = results(gc.infer(MODEL, [bytes_input(tgrpc, [png(a) for a in imgs], shape=[3, 1])],
                            outputs=[tgrpc.InferRequestedOutput("probabilities")]), ["probabilities"])["probabilities"]
    with Client(target) as c:  # auxnet.v1 raw pixels: the same probabilities
        assert [r.label for r in c.classify_batch(list(imgs))] == list(want.argmax(1))
    for name, a, datatype in pixels:
        for module, client in ((tgrpc, gc), (thttp, hc)):
            out = [module.InferRequestedOutput("probabilities")] + [module.InferRequestedOutput("label")]
            r = client.infer(MODEL, [array_input(module, name, a, datatype)], outputs=out)
            np.testing.assert_allclose(r.as_numpy("probabilities"), want, atol=1e-5, err_msg=f"{name} via {module.__name__}")
            assert list(r.as_numpy("label")) == list(want.argmax(1))
            assert r.as_numpy("exit_index") is None  # only what was asked for comes back


def test_typed_contents_and_raw_contents_agree_on_grpc(srv):
    """The protocol's other gRPC form: values in InferTensorContents instead of raw bytes."""
    _, target, _ = srv
    imgs = np.stack(images(2, seed=8))
    stub = oip_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(target))
    typed = oip.ModelInferRequest(model_name=MODEL, id="req-7", inputs=[oip.ModelInferRequest.InferInputTensor(
        name="pixels", datatype="UINT8", shape=list(imgs.shape), contents=oip.InferTensorContents(uint_contents=imgs.ravel().tolist()))])
    raw = oip.ModelInferRequest(model_name=MODEL, inputs=[oip.ModelInferRequest.InferInputTensor(
        name="pixels", datatype="UINT8", shape=list(imgs.shape))], raw_input_contents=[imgs.tobytes()])
    a, b = stub.ModelInfer(typed, timeout=10), stub.ModelInfer(raw, timeout=10)
    assert a.id == "req-7" and a.model_name == MODEL and [o.name for o in a.outputs] == OUTPUTS
    assert len(a.raw_output_contents) == len(a.outputs) == len(b.raw_output_contents)  # raw form, one per output
    for i, o in enumerate(a.outputs):
        if o.name != "server_latency_ms":  # everything but the timing is the same answer
            assert a.raw_output_contents[i] == b.raw_output_contents[i], o.name
    assert np.frombuffer(a.raw_output_contents[0], "<i8").shape == (2,) and list(a.outputs[0].shape) == [2]


def test_http_binary_outputs_compression_and_request_id(srv):
    _, _, url = srv
    c = thttp.InferenceServerClient(url)
    enc = [png(a) for a in images(2, seed=3)]
    plain = c.infer(MODEL, [bytes_input(thttp, enc)], request_id="abc")
    assert plain.get_response()["id"] == "abc"
    squeezed = c.infer(MODEL, [bytes_input(thttp, enc)], request_compression_algorithm="gzip",
                       response_compression_algorithm="gzip")
    assert list(squeezed.as_numpy("label")) == list(plain.as_numpy("label"))
    json_out = c.infer(MODEL, [bytes_input(thttp, enc)], outputs=[thttp.InferRequestedOutput("label", binary_data=False)])
    assert json_out.get_response()["outputs"][0]["data"] == list(plain.as_numpy("label"))


# --- parameters ------------------------------------------------------------------------------------------

def test_budget_parameter_stops_early_like_classify(srv):
    _, target, url = srv
    enc = [png(images(1, seed=2)[0])]
    for module, where in ((tgrpc, target), (thttp, url)):
        r = module.InferenceServerClient(where).infer(MODEL, [bytes_input(module, enc)], parameters={"budget_ms": 0.001})
        assert r.as_numpy("exit_index")[0] == 0 and r.as_numpy("stop_reason")[0] == b"budget"
        assert not r.as_numpy("budget_met")[0]
    with Client(target) as c:
        want = c.classify(enc[0], budget_ms=0.001)
    assert want.exit_index == 0 and not want.budget_met


ERRORS = [  # (parameters, inputs override, expected message part)
    ({"budget_ms": -1.0}, None, "budget_ms must be a positive number of milliseconds"),
    ({"budget_ms": "fast"}, None, "parameter 'budget_ms' must be a number; got 'fast'"),
    ({"min_confidence": 2.0}, None, "min_confidence must be in [0, 1]; got 2.0"),
    ({"max_exit": 9}, None, "max_exit 9 does not exist; valid: 0..1"),
    ({"max_exit": 0.5}, None, "parameter 'max_exit' must be a integer"),
    ({"calibrated_policy": True, "min_confidence": 0.5}, None, "set min_confidence or calibrated_policy, not both"),
    ({"budget_m": 5.0}, None, "unknown request parameter 'budget_m'; valid: budget_ms"),
    ({}, ("images", "BYTES"), "input 'images' does not exist; valid: image, pixels, pixels_fp32, input"),
    ({}, ("pixels", "FP32"), "input 'pixels' must be UINT8; got FP32 (FP32 pixels in [0, 1] go in 'pixels_fp32')"),
    ({}, ("bad-png", "BYTES"), "input 'image' image 0: image bytes are not a supported image format"),
    ({}, ("input-shape", "FP32"), "input 'input' must have shape [N,3,32,32]; got [1, 3, 16, 16]"),
]


def _error_input(module, what):
    name, datatype = what
    if name == "bad-png":
        return bytes_input(module, [b"not an image at all"])
    if name == "input-shape":
        return array_input(module, "input", np.zeros((1, 3, 16, 16), np.float32), "FP32")
    if datatype == "BYTES":
        inp = module.InferInput(name, [1], "BYTES")
        inp.set_data_from_numpy(np.array([png(images(1)[0])], dtype=object))
        return inp
    return array_input(module, name, np.zeros((1, 8, 8, 3), np.float32), datatype)


@pytest.mark.parametrize("module", [tgrpc, thttp], ids=["grpc", "http"])
def test_bad_requests_get_the_protocols_error_with_the_classify_message(srv, module):
    app, target, url = srv
    c = module.InferenceServerClient(target if module is tgrpc else url)
    good = bytes_input(module, [png(images(1)[0])])
    before = requests_ok(app.metrics_port)
    for params, override, message in ERRORS:
        inp = _error_input(module, override) if override else good
        with pytest.raises(InferenceServerException) as e:
            c.infer(MODEL, [inp], parameters=params)
        assert message in e.value.message(), (params, override, e.value.message())
        assert e.value.status() == ("StatusCode.INVALID_ARGUMENT" if module is tgrpc else "400")
    with pytest.raises(InferenceServerException) as e:
        c.infer("nope", [good])
    assert e.value.status() == ("StatusCode.NOT_FOUND" if module is tgrpc else "404")
    with pytest.raises(InferenceServerException) as e:
        c.infer(MODEL, [good], model_version="v999")
    assert "version 'v999' is not loaded" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        c.infer(MODEL, [good], outputs=[module.InferRequestedOutput("logits")])
    assert "output 'logits' does not exist; valid: label, class_name" in e.value.message()
    assert c.infer(MODEL, [good]).as_numpy("label").shape == (1,)  # and it keeps serving
    assert requests_ok(app.metrics_port) == before + 1
    with Client(target) as v1:  # the same message as auxnet.v1
        with pytest.raises(grpc.RpcError) as e:
            v1.classify(png(images(1)[0]), budget_ms=-1.0)
        assert ERRORS[0][2] in e.value.details()


def deep(levels: int):
    value = 0
    for _ in range(levels):
        value = [value]
    return value


def test_malformed_http_bodies_name_what_is_wrong(srv):
    _, _, url = srv
    infer = f"http://{url}/v2/models/{MODEL}/infer"
    one = {"name": "pixels", "datatype": "UINT8", "shape": [1, 2, 2, 3]}
    cases = [
        (b"{not json", {}, "request body is not valid JSON"),
        (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {}, "request body is JSON nested too deeply"),
        ({"inputs": [{**one, "data": deep(70)}]}, {}, "input 'pixels' data is not a (nested) list of UINT8 values"),
        ({"inputs": []}, {}, "request needs 'inputs'"),
        ({"inputs": [{**one, "data": [1, 2, 3]}]}, {}, "input 'pixels' has 3 elements but shape [1, 2, 2, 3] needs 12"),
        ({"inputs": [{**one, "data": ["a"] * 12}]}, {}, "input 'pixels' data is not a (nested) list of UINT8 values"),
        ({"inputs": [{**one, "data": [3.7] * 12}]}, {}, "UINT8 takes integers; got fractional numbers"),
        ({"inputs": [{**one, "data": [300] * 12}]}, {}, "values outside [0, 255]"),
        ({"inputs": [{**one, "data": [True] * 12}]}, {}, "UINT8 values: no true/false"),
        ({"inputs": [{**one, "name": "pixels_fp32", "datatype": "FP32", "data": [1e40] * 12}]}, {},
         "values beyond FP32's range"),
        ({"inputs": [{**one, "shape": [1, -2, 2, 3], "data": [0] * 12}]}, {}, "dimensions must be in [0, 2147483647]"),
        ({"inputs": [{**one, "datatype": "FP8", "data": [0]}]}, {}, "unknown datatype 'FP8'"),
        ({"inputs": [{**one, "data": [0] * 12}], "outputs": [{"name": "label", "parameters": {"classification": 3}}]},
         {}, "output 'label': classification applies to 'probabilities'"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"content_type": "base64"},
                      "data": ["@@@"]}]}, {}, "input 'image' is not valid base64"),
        ({"inputs": [{**one, "data": [0] * 12}]}, {"Content-Encoding": "br"}, "request body cannot be read with Content-Encoding 'br'"),
    ]
    for body, headers, message in cases:
        status, got = error_of(http(infer, "POST", body, headers))
        assert status == 400 and message in got, (body, got)
    header = json.dumps({"inputs": [{**one, "parameters": {"binary_data_size": 12}}]}).encode()
    for tail, message in ((b"\0" * 11, "binary_data_size 12 runs past the 11 bytes"),
                          (b"\0" * 13, "1 bytes of binary data follow the JSON header that no input claims")):
        status, got = error_of(http(infer, "POST", header + tail, {"Inference-Header-Content-Length": str(len(header))}))
        assert status == 400 and message in got
    bytes_header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                                           "parameters": {"binary_data_size": 9}}]}).encode()
    length = {"Inference-Header-Content-Length": str(len(bytes_header))}
    status, got = error_of(http(infer, "POST", bytes_header + b"\x05\0\0\0abcde", length))
    assert status == 400 and "BYTES data ends before element 1 of 2" in got
