"""Triton's classification extension on the Open Inference Protocol: `class_count` of Triton's own clients
turns 'probabilities' into BYTES [N, k] strings "<value>:<index>:<label>", over gRPC and HTTP, binary and
JSON; wrong counts and outputs refused by name."""

import json

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.grpc import service_pb2 as oip
from tritonclient.grpc import service_pb2_grpc as oip_grpc

from tests.server.helpers import images
from tests.server.v2_helpers import error_of, http, v2_server

MODEL = "tiny"


@pytest.fixture(scope="module")
def srv(tiny_repo):
    with v2_server(tiny_repo) as s:
        yield s


def _pixels(module, n: int):
    a = np.stack(images(n, seed=21))
    inp = module.InferInput("pixels", list(a.shape), "UINT8")
    inp.set_data_from_numpy(a)
    return inp


def _expected(probs: np.ndarray, k: int, classes) -> list[list[bytes]]:
    """What Triton writes: the k largest of each row, "%f:index:label", largest first."""
    rows = []
    for row in probs:
        order = sorted(range(len(row)), key=lambda j: (-float(row[j]), j))[:k]
        rows.append([b"%f:%d:%s" % (float(row[j]), j, classes[j].encode()) for j in order])
    return rows


@pytest.mark.parametrize("module", [tgrpc, thttp], ids=["grpc", "http"])
def test_class_count_returns_the_top_classes_of_the_same_probabilities(srv, module):
    app, target, url = srv
    classes = app.engines[MODEL].info.classes
    c = module.InferenceServerClient(target if module is tgrpc else url)
    assert "classification" in (c.get_server_metadata(as_json=True) if module is tgrpc else c.get_server_metadata())["extensions"]
    plain = c.infer(MODEL, [_pixels(module, 3)], outputs=[module.InferRequestedOutput("probabilities")])
    probs = plain.as_numpy("probabilities")
    assert probs.shape == (3, len(classes))
    for k in (1, 3, len(classes) + 5):  # more than there are classes: all of them, as Triton does
        r = c.infer(MODEL, [_pixels(module, 3)], outputs=[module.InferRequestedOutput("probabilities", class_count=k),
                                                            module.InferRequestedOutput("label")])
        top = r.as_numpy("probabilities")
        assert top.shape == (3, min(k, len(classes)))
        assert top.tolist() == _expected(probs, k, classes)
        assert [int(row[0].split(b":")[1]) for row in top] == r.as_numpy("label").tolist()
    # class_count=0 is the clients' "none": the plain FP32 tensor
    zero = c.infer(MODEL, [_pixels(module, 3)], outputs=[module.InferRequestedOutput("probabilities", class_count=0)])
    assert zero.as_numpy("probabilities").dtype == np.float32


def test_classification_in_json_and_refusals_over_http(srv):
    app, _, url = srv
    infer = f"http://{url}/v2/models/{MODEL}/infer"
    one = {"name": "pixels", "datatype": "UINT8", "shape": [1, 2, 2, 3], "data": [7] * 12}
    status, _, body = http(infer, "POST", {"inputs": [one], "outputs": [{"name": "probabilities",
                                                                            "parameters": {"classification": 2}}]})
    out = json.loads(body)["outputs"][0]
    assert status == 200 and out["datatype"] == "BYTES" and out["shape"] == [1, 2]
    value, index, label = out["data"][0].split(":")
    assert label == app.engines[MODEL].info.classes[int(index)] and len(value.split(".")[1]) == 6
    for given, message in ((-1, "parameter 'classification' must be a whole number of classes >= 1; got '-1'"),
                           (2.5, "got '2.5'"), ("3", "got '3'"), (True, "got 'True'")):
        status, got = error_of(http(infer, "POST", {"inputs": [one], "outputs": [
            {"name": "probabilities", "parameters": {"classification": given}}]}))
        assert status == 400 and message in got, (given, got)
    status, got = error_of(http(infer, "POST", {"inputs": [one], "outputs": [
        {"name": "label", "parameters": {"classification": 3}}]}))
    assert status == 400 and "output 'label': classification applies to 'probabilities' (one value per class); 'label' is INT64 [N]" in got
    status, got = error_of(http(infer, "POST", {"inputs": [one], "outputs": [{"name": "label", "parameters": [1]}]}))
    assert status == 400 and "output 'label': 'parameters' must be a JSON object" in got


def test_classification_refusals_over_grpc(srv):
    _, target, _ = srv
    with grpc.insecure_channel(target) as channel:
        _refusals_over_grpc(oip_grpc.GRPCInferenceServiceStub(channel))


def _refusals_over_grpc(stub):
    a = np.stack(images(1, seed=3))
    request = oip.ModelInferRequest(model_name=MODEL, inputs=[oip.ModelInferRequest.InferInputTensor(
        name="pixels", datatype="UINT8", shape=list(a.shape))], raw_input_contents=[a.tobytes()])
    for name, param, message in (("probabilities", oip.InferParameter(int64_param=-2), "got '-2'"),
                                 ("probabilities", oip.InferParameter(string_param="3"), "got '3'"),
                                 ("exit_index", oip.InferParameter(int64_param=2), "classification applies to 'probabilities'")):
        del request.outputs[:]
        out = request.outputs.add(name=name)
        out.parameters["classification"].CopyFrom(param)
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(request, timeout=20)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in e.value.details(), e.value.details()
