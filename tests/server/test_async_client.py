"""server.client.AsyncClient (grpc.aio): the same answers as the blocking Client for every method, a progressive
call left early cancelled on the server, the token and a call's metadata sent, and gRPC's retries of UNAVAILABLE
and CANCELLED as the blocking client's (up to `retries`, none with retries=0)."""

import asyncio
import json
import time

import grpc
import pytest

from protos.auxnet.v1 import inference_pb2 as pb
from server.client import AsyncClient, Client
from tests.server.conftest import running_server
from tests.server.helpers import images, png, wait_for
from tests.server.test_client_retries import flaky_server


def summary(r: pb.ClassifyResponse) -> tuple:
    return r.exit_index, r.label, round(r.confidence, 6), r.stop_reason, r.request_id, tuple(r.top_k)


def test_every_method_answers_as_the_blocking_client(server):
    app, target = server
    pictures = [png(im) for im in images(3, seed=5)]
    with Client(target) as c:
        expected = ([c.classify(p, request_id=f"r{i}", top_k=2) for i, p in enumerate(pictures)],
                    c.classify_batch(pictures, max_exit=1), list(c.classify_progressive(pictures[0])),
                    c.model_info())

    async def calls():
        async with AsyncClient(target) as a:
            # concurrent calls on one channel, as an event loop's code makes them
            one = await asyncio.gather(*(a.classify(p, request_id=f"r{i}", top_k=2) for i, p in enumerate(pictures)))
            return one, await a.classify_batch(pictures, max_exit=1), [r async for r in a.classify_progressive(pictures[0])], \
                await a.model_info()

    one, batch, steps, info = asyncio.run(calls())
    assert [summary(r) for r in one] == [summary(r) for r in expected[0]]
    assert [summary(r) for r in batch] == [summary(r) for r in expected[1]] and {r.exit_index for r in batch} == {1}
    exits = len(app.engines["tiny"].info.exits)
    assert [summary(r) for r in steps] == [summary(r) for r in expected[2]]
    assert [r.stop_reason for r in steps] == [pb.STOP_REASON_CONTINUED] * (exits - 1) + [pb.STOP_REASON_FINAL]
    # (its latency figures are the live ones, measured again between the two calls)
    assert (info.name, info.version, [e.layer for e in info.exits]) == (
        "tiny", expected[3].version, [e.layer for e in expected[3].exits]) and len(info.exits) == exits


def test_errors_are_grpc_status_codes(server):
    _, target = server

    async def refused(**kw):
        async with AsyncClient(target) as a:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await a.classify(png(images(1)[0]), **kw)
            return e.value.code(), e.value.details()

    assert asyncio.run(refused(min_confidence=1.5)) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                        "min_confidence must be in [0, 1]; got 1.5")
    code, details = asyncio.run(refused(model="nope"))
    assert code == grpc.StatusCode.NOT_FOUND and "model 'nope' is not loaded" in details


def test_leaving_a_progressive_call_early_cancels_it_on_the_server(tiny_repo, tmp_path):
    log = tmp_path / "access.jsonl"
    with running_server(tiny_repo, access_log=str(log), access_log_sample=1.0) as (app, target):
        engine = app.engines["tiny"]
        slow = engine.backends[1].run  # exit 1 takes 1.5 s: the client leaves after exit 0's answer
        engine.backends[1].run = lambda batch: (time.sleep(1.5), slow(batch))[1]

        async def leave_after_the_first():
            async with AsyncClient(target) as a:
                t0 = time.monotonic()
                steps = a.classify_progressive(png(images(1, seed=2)[0]), request_id="async-leaver")
                first = await steps.__anext__()
                await steps.aclose()  # what leaving an async for loop early does
                return first, time.monotonic() - t0

        first, left_after = asyncio.run(leave_after_the_first())
        assert first.stop_reason == pb.STOP_REASON_CONTINUED and first.exit_index == 0 and left_after < 1.0
        assert wait_for(lambda: engine.inflight == 0, timeout_s=1.0)  # released at the cancel, not after exit 1
        engine.backends[1].run = slow
    lines = [json.loads(line) for line in log.read_text().splitlines() if "async-leaver" in line]
    assert [(line["method"], line["code"]) for line in lines] == [("ClassifyProgressive", "CANCELLED")]


def test_the_token_and_a_calls_metadata_are_sent(tiny_repo):
    image = png(images(1)[0])

    async def calls(target, token):
        async with AsyncClient(target, token=token) as a:
            try:
                return (await a.classify(image, metadata=[("x-request-origin", "async-test")])).class_name
            except grpc.aio.AioRpcError as e:
                return e.code()

    with running_server(tiny_repo, auth_token="right") as (_, target):
        assert asyncio.run(calls(target, "wrong")) == grpc.StatusCode.UNAUTHENTICATED
        assert asyncio.run(calls(target, None)) == grpc.StatusCode.UNAUTHENTICATED
        assert isinstance(asyncio.run(calls(target, "right")), str)  # the token went beside the call's own metadata


@pytest.mark.parametrize("retries, failures, code, attempts_made, answered", [
    (0, 1, grpc.StatusCode.UNAVAILABLE, 1, False),
    (2, 2, grpc.StatusCode.UNAVAILABLE, 3, True),
    (1, 2, grpc.StatusCode.UNAVAILABLE, 2, False),
    (1, 1, grpc.StatusCode.CANCELLED, 2, True),
    (3, 1, grpc.StatusCode.INVALID_ARGUMENT, 1, False),  # never retried
])
def test_retries_are_the_blocking_clients(retries, failures, code, attempts_made, answered):
    server, target, attempts = flaky_server(failures=failures, code=code)

    async def call():
        async with AsyncClient(target, retries=retries) as a:
            try:
                return (await a.classify(b"not looked at")).exit_index
            except grpc.aio.AioRpcError as e:
                return e.code(), e.details()

    try:
        got = asyncio.run(call())
    finally:
        server.stop(None)
    assert len(attempts) == attempts_made
    assert got == (attempts_made if answered else (code, f"attempt {attempts_made} refused"))
