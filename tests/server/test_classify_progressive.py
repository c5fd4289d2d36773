"""auxnet.v1 ClassifyProgressive: the answer of every exit passed, then the one the request stops at, each equal to
Classify stopped there; errors as Classify's status codes; a client that leaves early cancels the computation."""

import asyncio
import json
import time

import grpc
import pytest

from protos.auxnet.v1 import inference_pb2 as pb
from server.client import Client
from tests.server.conftest import running_server
from tests.server.helpers import images, png, wait_for
from tests.server.test_carry_rows import record_batches
from tests.server.test_engine import in_loop, make_engine, x


def _summary(r: pb.ClassifyResponse) -> tuple:
    return r.exit_index, r.label, round(r.confidence, 6), r.request_id


def test_every_exit_passed_answers_as_classify_stopped_there(server):
    app, target = server
    exits = len(app.engines["tiny"].info.exits)
    image = png(images(1, seed=11)[0])
    with Client(target) as c:
        got = list(c.classify_progressive(image, request_id="p-1"))
        expected = [c.classify(image, max_exit=k, request_id="p-1") for k in range(exits)]
        policy = list(c.classify_progressive(image, calibrated_policy=True))
        policy_unary = c.classify(image, calibrated_policy=True)
    assert [_summary(r) for r in got] == [_summary(r) for r in expected]
    assert [r.stop_reason for r in got] == [pb.STOP_REASON_CONTINUED] * (exits - 1) + [pb.STOP_REASON_FINAL]
    assert _summary(policy[-1]) == _summary(policy_unary) and policy[-1].stop_reason == policy_unary.stop_reason
    assert [r.exit_index for r in policy] == list(range(policy_unary.exit_index + 1))


@pytest.mark.parametrize("kw, message", [({"min_confidence": 1.5}, "min_confidence must be in [0, 1]; got 1.5"),
                                         ({"model": "nope"}, "model 'nope' is not loaded")])
def test_errors_are_the_status_codes_of_classify(server, kw, message):
    _, target = server
    image = png(images(1)[0])
    with Client(target) as c:
        for call in (lambda: list(c.classify_progressive(image, **kw)), lambda: c.classify(image, **kw)):
            with pytest.raises(grpc.RpcError) as e:
                call()
            assert e.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
            assert message in e.value.details()


def test_leaving_after_the_first_answer_cancels_the_request(tiny_repo, tmp_path):
    log = tmp_path / "access.jsonl"
    with running_server(tiny_repo, access_log=str(log), access_log_sample=1.0) as (app, target):
        engine = app.engines["tiny"]
        slow = engine.backends[1].run  # exit 1 takes 1.5 s: the client leaves after exit 0's answer, long before
        engine.backends[1].run = lambda batch: (time.sleep(1.5), slow(batch))[1]
        with Client(target) as c:
            t0 = time.monotonic()
            answers = c.classify_progressive(png(images(1, seed=2)[0]), request_id="leaver")
            first = next(answers)
            answers.close()  # what leaving a for loop early does: the call is cancelled
            left_after = time.monotonic() - t0
            assert first.stop_reason == pb.STOP_REASON_CONTINUED and first.exit_index == 0
            assert wait_for(lambda: engine.inflight == 0, timeout_s=1.0)  # released at the cancel, not after exit 1
        engine.backends[1].run = slow
    assert left_after < 1.0
    lines = [json.loads(line) for line in log.read_text().splitlines() if "leaver" in line]
    assert [(line["method"], line["code"]) for line in lines] == [("ClassifyProgressive", "CANCELLED")]


@in_loop
async def test_a_cancelled_request_skips_the_segments_not_yet_started():
    """At the engine: cancelled by its progress callback once exit 0 has answered, while exit 1 runs in the same
    chain (0.2 s), the request never reaches exit 2."""
    engine = make_engine(n=3, delays=[0.0, 0.2, 0.2])
    sizes = record_batches(engine)
    engine.start()
    try:
        task = None

        def cancel_on_first(answer):
            assert answer.exit_index == 0
            task.cancel()

        task = asyncio.ensure_future(engine.classify(x(1), time.monotonic(), None, None, None, None,
                                                     progress=cancel_on_first))
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.5)  # time enough for exit 2, had it run
    finally:
        await engine.stop()
    assert sizes == {0: [1], 1: [1], 2: []}
    assert engine.inflight == 0
