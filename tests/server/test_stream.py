"""Triton's streaming RPC, ModelStreamInfer, through tritonclient's own stream API: answers matched by request id,
progressive answers exit by exit (each equal to a unary request stopped at that exit), errors in-band with the
stream going on, flow control under the in-flight limit, the bearer token, counting and the access log."""

import json
import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.grpc import service_pb2 as oip
from tritonclient.grpc import service_pb2_grpc as oip_grpc
from tritonclient.utils import InferenceServerException

from server.engine_config import EngineConfig
from tests.server.helpers import images, png, wait_for
from tests.server.v2_helpers import counted, error_of, http, v2_server

MODEL = "tiny"
TIMEOUT_S = 30


@pytest.fixture(scope="module")
def srv(tiny_repo):
    with v2_server(tiny_repo) as s:
        yield s


def _image(seed: int = 0, n: int = 1):
    inp = tgrpc.InferInput("image", [n], "BYTES")
    inp.set_data_from_numpy(np.array([png(a) for a in images(n, seed=seed)], dtype=object))
    return inp


class Stream:
    """A tritonclient stream whose callback's (result, error) pairs are read in order."""

    def __init__(self, target: str, headers: dict | None = None):
        self.client = tgrpc.InferenceServerClient(target)
        self.got: queue.Queue = queue.Queue()
        self.client.start_stream(lambda result, error: self.got.put((result, error)), headers=headers)

    def send(self, request_id: str, seed: int = 0, n: int = 1, **parameters):
        outputs = [tgrpc.InferRequestedOutput(name) for name in ("label", "exit_index", "stop_reason", "probabilities")]
        self.client.async_stream_infer(MODEL, [_image(seed, n)], request_id=request_id, outputs=outputs,
                                       parameters=parameters or None)

    def next(self):
        return self.got.get(timeout=TIMEOUT_S)

    def close(self, cancel: bool = False):
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def _final(result) -> bool:
    return result.get_response().parameters["triton_final_response"].bool_param


def _unary(target: str, seed: int, **parameters):
    c = tgrpc.InferenceServerClient(target)
    return c.infer(MODEL, [_image(seed)], parameters=parameters or None,
                   outputs=[tgrpc.InferRequestedOutput(n) for n in ("label", "exit_index", "stop_reason", "probabilities")])


def test_each_request_gets_one_response_matched_by_id_equal_to_the_unary_answer(srv):
    app, target, _ = srv
    before = counted(app, MODEL, "OK", "v2-grpc")
    s = Stream(target)
    try:
        for i in range(6):
            s.send(f"r{i}", seed=i, calibrated_policy=True)
        got = {}
        for _ in range(6):
            result, error = s.next()
            assert error is None
            assert _final(result)
            got[result.get_response().id] = result
    finally:
        s.close()
    assert sorted(got) == [f"r{i}" for i in range(6)]
    for i in range(6):
        unary = _unary(target, i, calibrated_policy=True)
        for name in ("label", "exit_index", "stop_reason"):
            assert got[f"r{i}"].as_numpy(name).tolist() == unary.as_numpy(name).tolist()
        np.testing.assert_allclose(got[f"r{i}"].as_numpy("probabilities"), unary.as_numpy("probabilities"), rtol=1e-6)
    assert counted(app, MODEL, "OK", "v2-grpc") - before == 12  # six streamed, six unary: each request once


def test_progressive_answers_every_exit_in_order_each_equal_to_stopping_there(srv):
    app, target, _ = srv
    exits = len(app.engines[MODEL].info.exits)
    s = Stream(target)
    try:
        s.send("p", seed=3, progressive=True)  # no rule that stops early: every exit, then the final one
        responses = [s.next() for _ in range(exits)]
    finally:
        s.close()
    assert all(error is None for _, error in responses)
    results = [r for r, _ in responses]
    assert [int(r.as_numpy("exit_index")[0]) for r in results] == list(range(exits))
    assert [r.as_numpy("stop_reason")[0] for r in results] == [b"continued"] * (exits - 1) + [b"final"]
    assert [_final(r) for r in results] == [False] * (exits - 1) + [True]
    assert {r.get_response().id for r in results} == {"p"}
    for k, r in enumerate(results):  # what a unary request told to stop at exit k answers
        at_k = _unary(target, 3, max_exit=k)
        assert int(at_k.as_numpy("exit_index")[0]) == k
        np.testing.assert_allclose(r.as_numpy("probabilities"), at_k.as_numpy("probabilities"), rtol=1e-6)
        assert r.as_numpy("label").tolist() == at_k.as_numpy("label").tolist()


def test_progressive_stops_where_its_rule_says(srv):
    _, target, _ = srv
    s = Stream(target)
    try:
        got = {}
        for rule, parameters in (("confidence", {"min_confidence": 0.0}), ("max_exit", {"max_exit": 0}),
                                 ("budget", {"budget_ms": 1e-6})):  # each stops at exit 0: one response, the last
            s.send(rule, seed=1, progressive=True, **parameters)
            got[rule] = s.next()
    finally:
        s.close()
    for rule, (result, error) in got.items():
        assert error is None and _final(result), rule
        assert result.as_numpy("exit_index").tolist() == [0], rule
        assert result.as_numpy("stop_reason").tolist() == [rule.encode()]


def test_an_error_fails_its_request_by_name_and_the_stream_goes_on(srv):
    _, target, _ = srv
    s = Stream(target)
    try:
        s.send("two", n=2, progressive=True)
        _, error = s.next()
        assert error is not None
        assert error.message() == ("request 'two': INVALID_ARGUMENT: a progressive request holds one image (its "
                                   "responses are that image's answers, exit by exit); got 2: send one request per "
                                   "image on the stream")
        s.send("typo", budget_mss=5)
        _, error = s.next()
        assert error.message().startswith("request 'typo': INVALID_ARGUMENT: unknown request parameter 'budget_mss'")
        s.send("kind", progressive=1)
        _, error = s.next()
        assert error.message() == "request 'kind': INVALID_ARGUMENT: parameter 'progressive' must be a boolean; got 1"
        s.client.async_stream_infer("nope", [_image()], request_id="model")
        _, error = s.next()
        assert error.message().startswith("request 'model': NOT_FOUND: model 'nope' is not loaded")
        s.send("fine", seed=2)  # the same stream still answers
        result, error = s.next()
        assert error is None and result.get_response().id == "fine" and _final(result)
    finally:
        s.close()


def test_stream_parameters_are_refused_by_name_on_the_unary_surfaces(srv):
    _, target, url = srv
    with pytest.raises(InferenceServerException) as e:
        _unary(target, 0, progressive=True)
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert e.value.message() == ("parameter 'progressive' applies only to the streaming RPC ModelStreamInfer (gRPC), "
                                 "which can send more than one response per request")
    one = {"name": "pixels", "datatype": "UINT8", "shape": [1, 2, 2, 3], "data": [7] * 12}
    status, message = error_of(http(f"http://{url}/v2/models/{MODEL}/infer", "POST",
                                    {"inputs": [one], "parameters": {"progressive": True}}))
    assert status == 400 and "applies only to the streaming RPC ModelStreamInfer" in message


def test_a_stream_faster_than_the_inflight_limit_is_held_back_not_refused(tiny_repo):
    """Twelve requests sent at once on a stream of a server admitting two at a time: all answered (the stream is
    read only as room frees), none refused RESOURCE_EXHAUSTED as twelve unary calls at once would partly be."""
    with v2_server(tiny_repo, engine=EngineConfig(max_batch=4, max_inflight=2)) as (app, target, _):
        s = Stream(target)
        try:
            for i in range(12):
                s.send(f"q{i}", seed=i, progressive=True)
            finals, errors = set(), []
            while len(finals) + len(errors) < 12:
                result, error = s.next()
                if error is not None:
                    errors.append(error.message())
                elif _final(result):
                    finals.add(result.get_response().id)
        finally:
            s.close()
        assert errors == [] and finals == {f"q{i}" for i in range(12)}
        assert counted(app, MODEL, "RESOURCE_EXHAUSTED") == 0


def test_the_bearer_token_guards_the_stream(tiny_repo):
    with v2_server(tiny_repo, auth_token="s3cret") as (_, target, _):
        s = Stream(target, headers={"authorization": "Bearer wrong"})
        try:  # refused when the stream opens, before any request is sent
            result, error = s.next()
            assert result is None and "bearer token" in error.message()
            assert error.status() == "StatusCode.UNAUTHENTICATED"
        finally:
            s.close()
        s = Stream(target, headers={"authorization": "Bearer s3cret"})
        try:
            s.send("y")
            result, error = s.next()
            assert error is None and result.get_response().id == "y"
        finally:
            s.close()


def test_a_cancelled_stream_leaves_the_server_serving_and_counts_its_requests(tiny_repo, tmp_path):
    log_path = tmp_path / "access.jsonl"
    with v2_server(tiny_repo, access_log=str(log_path), access_log_sample=1.0) as (app, target, _):
        s = Stream(target)
        s.send("done", seed=4)
        result, error = s.next()
        assert error is None
        for i in range(8):
            s.send(f"left{i}", seed=i, progressive=True)
        result, error = s.next()  # a first progressive answer: the server has read at least that request (without
        assert error is None  # it, the cancel could come before any was read, and nothing below was logged: flaky)
        s.close(cancel=True)  # the client goes away with requests in flight
        s = Stream(target)
        try:
            s.send("after", seed=5)
            result, error = s.next()
            assert error is None and result.get_response().id == "after"
        finally:
            s.close()
        assert app.engines[MODEL].inflight == 0
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    streamed = [line for line in lines if line["method"] == "ModelStreamInfer"]
    codes = {line["id"]: line["code"] for line in streamed}
    assert len(codes) == len(streamed)  # one line per request, never one per progressive response
    assert codes["done"] == codes["after"] == "OK"
    left = {i: c for i, c in codes.items() if i.startswith("left")}  # those read before the cancel: answered or not
    assert left and set(left.values()) <= {"OK", "CANCELLED"}
    assert all(line["surface"] == "v2-grpc" for line in streamed)


def test_the_stream_answers_on_the_specification_path_with_raw_grpc(srv):
    """Without tritonclient's stream helper: Triton's stub, the spec's service path, two requests, two responses."""
    _, target, _ = srv
    a = images(1, seed=9)[0]
    request = oip.ModelInferRequest(model_name=MODEL, id="raw", inputs=[oip.ModelInferRequest.InferInputTensor(
        name="pixels", datatype="UINT8", shape=[1, *a.shape])], raw_input_contents=[a.tobytes()])
    with grpc.insecure_channel(target) as channel:
        responses = list(oip_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter([request, request]),
                                                                                    timeout=TIMEOUT_S))
    assert [r.error_message for r in responses] == ["", ""]
    assert [r.infer_response.id for r in responses] == ["raw", "raw"]
    assert all(r.infer_response.parameters["triton_final_response"].bool_param for r in responses)


def test_draining_answers_what_the_stream_had_sent_and_refuses_the_rest_in_band(tiny_repo):
    """A request held in a queue when the server starts draining is answered on its stream; one sent on the same
    stream after that gets UNAVAILABLE in-band (clients retry those elsewhere); the drain completes."""
    import asyncio

    with v2_server(tiny_repo, engine=EngineConfig(max_batch=16, max_queue_delay_ms=3000)) as (app, target, _):
        s = Stream(target)
        try:
            s.send("held", seed=1)
            assert wait_for(lambda: app.engines[MODEL].inflight == 1)
            shutdown = asyncio.run_coroutine_threadsafe(app.shutdown(10.0), app.loop)
            assert wait_for(lambda: app.draining)
            s.send("late", seed=2)
            got = {}
            for _ in range(2):
                result, error = s.next()
                if error is not None:
                    got["late" if error.message().startswith("request 'late'") else "?"] = error.message()
                else:
                    got[result.get_response().id] = result
            assert _final(got["held"]) and got["held"].as_numpy("stop_reason").tolist() == [b"final"]
            assert got["late"].startswith("request 'late': UNAVAILABLE: server is shutting down")
            assert shutdown.result(30) is True
        finally:
            s.close(cancel=True)


def test_a_corrupt_message_ends_the_stream_invalid_argument_after_answering_those_before_it(srv):
    _, target, _ = srv
    a = images(1, seed=9)[0]
    good = oip.ModelInferRequest(model_name=MODEL, id="good", inputs=[oip.ModelInferRequest.InferInputTensor(
        name="pixels", datatype="UINT8", shape=[1, *a.shape])], raw_input_contents=[a.tobytes()]).SerializeToString()
    with grpc.insecure_channel(target) as channel:
        call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                     request_serializer=lambda b: b,
                                     response_deserializer=oip.ModelStreamInferResponse.FromString)
        responses = call(iter([good, b"\xff\xff\xff\x01not a message", good]), timeout=TIMEOUT_S)
        got = []
        with pytest.raises(grpc.RpcError) as e:
            for r in responses:
                got.append(r.infer_response.id)
    assert got == ["good"]
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith("message 2 of the stream is not a ModelInferRequest (")
    assert e.value.details().endswith("the 1 before it were answered, the stream ends")
    assert tgrpc.InferenceServerClient(target).is_server_live()
