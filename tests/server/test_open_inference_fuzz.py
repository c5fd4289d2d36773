"""Malformed Open Inference Protocol requests, generated: every one gets a 4xx with a JSON error (HTTP) or
INVALID_ARGUMENT/NOT_FOUND (gRPC), never an internal error, and the server keeps serving (issue 11)."""

import json

import grpc
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as oip
from tritonclient.grpc import service_pb2_grpc as oip_grpc

from tests.server.helpers import images, png
from tests.server.v2_helpers import counted, http, v2_server

GOOD = png(images(1)[0])
DATATYPES = ["BYTES", "UINT8", "FP32", "FP16", "INT64", "BOOL", "FP8", "", "uint8"]
NAMES = ["image", "pixels", "pixels_fp32", "input", "", "IMAGE", "x" * 100]
dims = st.lists(st.one_of(st.integers(-3, 70), st.sampled_from([2**31, 2**40, 2**62, 2**63 - 1])), max_size=9)
values = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.text(max_size=5),
                   st.lists(st.integers(-300, 300), max_size=20), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
params = st.dictionaries(st.sampled_from(["budget_ms", "min_confidence", "max_exit", "calibrated_policy", "timeout",
                                          "priority", "binary_data_output", "bogus", "sequence_id"]), values, max_size=3)
tensor = st.fixed_dictionaries({"name": st.sampled_from(NAMES), "datatype": st.sampled_from(DATATYPES), "shape": dims},
                               optional={"data": st.one_of(values, st.just([])), "parameters": st.dictionaries(
                                   st.sampled_from(["binary_data_size", "content_type"]), values, max_size=2)})
bodies = st.fixed_dictionaries({}, optional={"inputs": st.one_of(st.lists(tensor, max_size=3), values), "parameters": params,
                                             "outputs": st.one_of(st.lists(st.fixed_dictionaries(
                                                 {"name": st.sampled_from(["label", "probabilities", "nope", ""])},
                                                 optional={"parameters": st.dictionaries(st.sampled_from(
                                                     ["binary_data", "classification"]), values, max_size=2)}), max_size=3),
                                                 values), "id": values})


def test_fuzzed_v2_requests_are_refused_by_name_and_the_server_keeps_serving(tiny_repo):
    with v2_server(tiny_repo) as (app, target, url):
        infer = f"http://{url}/v2/models/tiny/infer"
        good = {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 32, 32, 3],
                            "data": images(1)[0].ravel().tolist()}]}
        expected = json.loads(http(infer, "POST", good)[2])["outputs"][0]["data"]
        stub = oip_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(target))
        seen = {"ok": 0, "refused": 0}

        @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(body=bodies, tail=st.binary(max_size=64), use_tail=st.booleans())
        def one(body, tail, use_tail):
            raw = json.dumps(body, allow_nan=True).encode()
            headers = {"Inference-Header-Content-Length": str(len(raw))} if use_tail else {}
            status, _, reply = http(infer, "POST", raw + (tail if use_tail else b""), headers)
            if status == 200:
                seen["ok"] += 1
            else:
                assert status in (400, 404, 413), (status, reply[:300], body)
                assert len(json.loads(reply)["error"]) > 10
                seen["refused"] += 1
            # The same request over gRPC, built from the JSON where it can be
            req = oip.ModelInferRequest(model_name="tiny")
            for t in body["inputs"] if isinstance(body.get("inputs"), list) else []:
                if not isinstance(t, dict):
                    continue
                shape = [d for d in t["shape"] if -2**63 <= d < 2**63]
                req.inputs.add(name=t["name"], datatype=t["datatype"], shape=shape)
            if req.inputs:
                req.raw_input_contents.extend([tail] * len(req.inputs))
            try:
                stub.ModelInfer(req, timeout=10)
            except grpc.RpcError as e:
                assert e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (e.code(), e.details())

        one()
        assert json.loads(http(infer, "POST", good)[2])["outputs"][0]["data"] == expected
        assert seen["refused"] > 300
        assert counted(app, "tiny", "INTERNAL") == 0
        total = sum(s.value for m in app.metrics.registry.collect() if m.name == "auxnet_requests" for s in m.samples)
        assert total < 100_000  # images counted from what was parsed, never from a declared shape like 2**62
        assert np.isfinite(expected[0])
