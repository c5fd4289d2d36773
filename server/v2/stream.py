"""Triton's bidirectional streaming RPC, ModelStreamInfer (tritonclient's start_stream / async_stream_infer):
the protocol's ModelInferRequests in, ModelStreamInferResponses out as each request is answered, in any order
(each carries its request's id). The Open Inference Protocol has no streaming RPC; Triton's clients use this one.

What it adds here beside ModelInfer:
- one connection and one call for any number of requests, answered as they finish (no head-of-line blocking);
- **progressive answers** (request parameter `progressive: true`, one image per request): a response from every
  exit the request passes, as soon as that exit is computed, then the answer of the exit where its rule stops it
  (stop_reason `continued` on all but the last). The shallow answer arrives in the time of the first segment; the
  client may act on it and still receive the deeper ones. Every response carries the parameter
  `triton_final_response` (true on a request's last), as Triton sets it for decoupled models;
- an error fails its request, not the stream: it comes back as the response's `error_message`, prefixed with the
  request's id (tritonclient hands a callback only the message) and the status code ModelInfer would have given.

A message that is not a ModelInferRequest ends the stream INVALID_ARGUMENT, after the requests before it are
answered (grpc parses each message as it is read; nothing after a corrupt one can be trusted).

Flow control: at most `--max-inflight` requests of one stream are in progress (their last response not yet
written); beyond that the stream is not read, so a client that sends faster than it is answered is held back by
gRPC's flow control instead of queueing without bound here. Each request still passes the engine's admission.
Counting, access log and statistics are per request, as for ModelInfer (surface v2-grpc, method ModelStreamInfer)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import DecodeError

from protos.oip import open_inference_pb2 as oip
from protos.oip import triton_compat_pb2 as triton
from server.errors import InvalidInput
from server.handlers import RECEIVED_BYTES
from server.jobs import Answer
from server.requests import parse_where_cheap
from server.service import CallSnapshot, guard
from server.v2 import model as v2
from server.v2.grpc_messages import infer_response, output_targets, request_inputs, request_parameters, requested_outputs
from server.v2.tensors import Tensor

log = logging.getLogger("auxnet.server")
FINAL_FLAG = "triton_final_response"


async def model_stream_infer(app, request_iterator, context) -> AsyncIterator[triton.ModelStreamInferResponse]:
    """The responses of one stream, in the order they are ready."""
    call = CallSnapshot(context)
    out: asyncio.Queue = asyncio.Queue()  # (response, last of its request); None: the stream is done
    room = asyncio.Semaphore(max(1, app.cfg.engine.max_inflight))
    pending: set[asyncio.Task] = set()

    corrupt: list[str] = []  # why the stream could not be read on, if a message was not a ModelInferRequest
    read_count = 0

    async def read() -> None:
        nonlocal read_count
        try:
            try:
                async for request in request_iterator:
                    read_count += 1
                    await room.acquire()  # released when the request's last response is written
                    task = asyncio.create_task(_answer(app, call, request, out))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
            except DecodeError as e:  # grpc parses each message as it is read: nothing after it can be trusted
                corrupt.append(f"message {read_count + 1} of the stream is not a ModelInferRequest ({e}); the "
                               f"{read_count} before it were answered, the stream ends")
            await asyncio.gather(*list(pending), return_exceptions=True)  # the client half-closed: finish the rest
        finally:
            out.put_nowait(None)

    reader = asyncio.create_task(read())
    try:
        while (item := await out.get()) is not None:
            response, last = item
            yield response
            if last:
                room.release()
        await reader  # re-raises what ended the reading, if anything unexpected did
        if corrupt:  # counted and logged where it was parsed (server/handlers.py)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, corrupt[0])
    finally:  # the client went away or the server stops: nobody is left to answer
        reader.cancel()
        for task in list(pending):
            task.cancel()


async def _answer(app, call: CallSnapshot, request, out: asyncio.Queue) -> None:
    """One request of the stream: its responses (or its error) onto `out`; the last one marked."""
    arrival = time.monotonic()
    stream_deadline = call.deadline
    parsed: list[Tensor] = []
    answered: list[Answer] = []
    failed: list[triton.ModelStreamInferResponse] = []

    async def run():
        engine = v2.resolve(app, request.model_name, request.model_version)
        params = request_parameters(request)
        controls, timeout_s, _ = v2.parse_parameters(params, stream=True)
        end = v2.earliest(stream_deadline, None if timeout_s is None else arrival + timeout_s)
        inputs = await parse_where_cheap(app, RECEIVED_BYTES.get(), lambda: request_inputs(request, app.shared_memory))
        targets = output_targets(request, app.shared_memory)
        if targets and params.get("progressive"):  # several answers, one region: each would overwrite the last
            raise InvalidInput("outputs in shared memory take one answer, and a progressive request gets one per exit "
                               "it passes: drop 'progressive' or the outputs' shared memory parameters")
        parsed.extend(inputs)
        requested = requested_outputs(request)

        def progress(answer: Answer) -> None:  # on the event loop, inside the engine's batch: must not raise
            try:
                response = infer_response(engine, request.id, v2.outputs(engine, [answer], requested), {FINAL_FLAG: False})
                out.put_nowait((triton.ModelStreamInferResponse(infer_response=response), False))
            except Exception:  # noqa: BLE001 - a lost intermediate answer must not fail the batch's others
                log.exception("progressive answer of request %r at exit %d not sent", request.id[:64], answer.exit_index)

        answers = await v2.infer(app, engine, inputs, controls, arrival, end,
                                 progress=progress if params.get("progressive") else None)
        answered.extend(answers)
        tensors = v2.outputs(engine, answers, requested)
        # As ModelInfer: outputs with a region are written there, their entries carry its parameters, not data
        shared = v2.place_in_shared_memory(app.shared_memory, tensors, targets) if targets else None
        return infer_response(engine, request.id, tensors, {FINAL_FLAG: True}, shared=shared)

    async def fail(code: grpc.StatusCode, message: str) -> None:
        who = f"request {request.id[:64]!r}: " if request.id else ""
        failed.append(triton.ModelStreamInferResponse(
            error_message=f"{who}{code.name}: {message}",
            infer_response=oip.ModelInferResponse(model_name=request.model_name[:256], id=request.id)))

    response = await guard(app, call, request.model_name, run(), images=lambda: v2.image_count(parsed),
                           method="ModelStreamInfer", surface="v2-grpc", answers=lambda: answered,
                           request_id=request.id, fail=fail)
    if response is not None:
        out.put_nowait((triton.ModelStreamInferResponse(infer_response=response), True))
    else:
        out.put_nowait((failed[0], True))
