"""The gRPC servicer: decode -> engine -> encode. Thin on purpose; errors map to codes in `_guard`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import grpc
import numpy as np

from protos.auxnet.v1 import inference_pb2 as pb
from protos.auxnet.v1 import inference_pb2_grpc as pb_grpc
from server.decode import ImageLimits, decode_encoded, decode_raw, to_model_input
from server.engine import DEADLINE_SLACK_S, ModelEngine
from server.errors import InvalidInput, ServingError
from server.jobs import Answer
from server.requests import ExitControls, decode_where_cheap, encoded_pixels, prepare_all
from server.requests import count as count_images

log = logging.getLogger("auxnet.server")
REASON_ENUM = {"confidence": pb.STOP_REASON_CONFIDENCE, "budget": pb.STOP_REASON_BUDGET,
               "final": pb.STOP_REASON_FINAL, "max_exit": pb.STOP_REASON_MAX_EXIT, "continued": pb.STOP_REASON_CONTINUED}
STOP_REASONS = {v: k for k, v in REASON_ENUM.items()}  # the enum back to the engine's names


class EarlyExitServicer(pb_grpc.EarlyExitServiceServicer):
    def __init__(self, app):
        self.app = app

    # --- RPCs -----------------------------------------------------------------------------------------

    async def Classify(self, request, context):
        arrival, deadline = self._arrival(context)
        return await self._guard(context, request.model, self._classify(request, arrival, deadline), method="Classify",
                                 request_id=request.request_id)

    async def ClassifyBatch(self, request, context):
        arrival, deadline = self._arrival(context)
        model = request.requests[0].model if request.requests else ""

        async def run():
            if not request.requests:
                raise InvalidInput("ClassifyBatch needs at least one request")
            wanted = Counter(r.model for r in request.requests)
            for name, n in wanted.items():  # room for every item, before decoding any (evicting for the lowest level asked)
                engine = self.app.engine_for(name)
                levels = Counter(engine.priority_level(r.priority) for r in request.requests if r.model == name)
                engine.check_admission(n, max(levels), per_level=levels)
            prepared = await prepare_all((self._prepare(r, arrival, deadline) for r in request.requests),
                                         lambda i: f"requests[{i}]")
            answers = await asyncio.gather(*(engine.classify(*args) for engine, args, _ in prepared))
            return pb.ClassifyBatchResponse(responses=[
                self._encode(engine, r, a) for (engine, _, r), a in zip(prepared, answers)])

        return await self._guard(context, model, run(), images=max(1, len(request.requests)), method="ClassifyBatch",
                                 request_id=lambda: [r.request_id for r in request.requests])

    async def ClassifyProgressive(self, request, context):
        """A response per exit passed, then the one it stops at. The engine's progress callback queues them; the
        request runs as a task of its own so that this generator can send them while it computes. A client that
        cancels cancels the task: the engine drops the request before its next segment."""
        arrival, deadline = self._arrival(context)
        call = CallSnapshot(context)
        sent: asyncio.Queue = asyncio.Queue()
        failed: list[tuple[grpc.StatusCode, str]] = []

        async def run():
            engine, args, r = await self._prepare(request, arrival, deadline)
            answer = await engine.classify(*args, progress=lambda a: sent.put_nowait(self._encode(engine, r, a)))
            return self._encode(engine, r, answer)

        async def fail(code: grpc.StatusCode, message: str) -> None:
            failed.append((code, message))

        task = asyncio.create_task(guard(self.app, call, request.model, run(), surface="auxnet.v1",
                                         method="ClassifyProgressive", request_id=request.request_id, fail=fail))
        task.add_done_callback(lambda _: sent.put_nowait(None))
        try:
            while (response := await sent.get()) is not None:
                yield response
            last = await task
            if failed:
                await _abort(context, *failed[0])
            elif last is not None:
                yield last
        finally:
            task.cancel()

    async def GetModelInfo(self, request, context):
        async def run():
            engine = self.app.engine_for(request.model)
            ks = [e.index for e in engine.info.exits]
            per_image = [engine.latency.predict(k, engine.cfg.max_batch) / engine.cfg.max_batch for k in ks]
            return model_info_message(engine.info, [engine.policy_threshold(k) for k in ks],
                                      [1000 * engine.latency.predict(k, 1) for k in ks], [1000 * t for t in per_image],
                                      engine.backends[0].name, engine.cfg.max_batch)

        return await self._guard(context, request.model, run(), count=False)

    # --- steps ----------------------------------------------------------------------------------------

    @staticmethod
    def _arrival(context) -> tuple[float, float | None]:
        """Arrival time and the gRPC deadline on our clock, both read before any work (decoding included)."""
        arrival = time.monotonic()
        remaining = context.time_remaining()
        return arrival, (arrival + remaining if remaining is not None else None)

    async def _classify(self, request, arrival, deadline):
        engine, args, request = await self._prepare(request, arrival, deadline)
        return self._encode(engine, request, await engine.classify(*args))

    async def _prepare(self, r, arrival, deadline):
        """Validate one request and decode its image: (engine, classify args, request)."""
        engine = self.app.engine_for(r.model)
        info = engine.info
        controls = ExitControls(r.budget_ms if r.HasField("budget_ms") else None,
                                r.min_confidence if r.HasField("min_confidence") else None,
                                r.max_exit if r.HasField("max_exit") else None, r.calibrated_policy, r.priority)
        controls.check(len(info.exits))
        level = engine.priority_level(r.priority)
        if r.top_k > len(info.classes):
            raise InvalidInput(f"top_k {r.top_k} exceeds the model's {len(info.classes)} classes")
        engine.check_admission(1, level)  # refuse before paying for the decode
        x = await self._decode(r, engine)
        return engine, controls.classify_args(x, arrival, deadline), r

    async def _decode(self, r, engine: ModelEngine) -> np.ndarray:
        limits: ImageLimits = self.app.limits
        info = engine.info
        which = r.WhichOneof("image")
        if which is None:
            raise InvalidInput("request has no image: set 'encoded' (image file bytes) or 'raw' (pixels)")

        opened, pixels = encoded_pixels(r.encoded, limits.formats) if which == "encoded" else (None, r.raw.height * r.raw.width)

        def work():
            if which == "encoded":
                rgb = decode_encoded(r.encoded, limits, size=info.input_shape[1:], opened=opened)
            else:
                raw = r.raw
                rgb = decode_raw(raw.data, raw.height, raw.width, raw.channels,
                                 raw.pixel_type == pb.PIXEL_TYPE_FLOAT32, limits)
            return to_model_input(rgb, info.input_shape, info.mean, info.std)

        return await decode_where_cheap(self.app, work, pixels)

    def _encode(self, engine: ModelEngine, r, a: Answer) -> pb.ClassifyResponse:
        info = engine.info
        p = a.probs
        order = np.argsort(-p)
        k = max(1, r.top_k)
        top = [pb.ClassScore(label=int(c), class_name=info.classes[c], confidence=float(p[c])) for c in order[:k]]
        best = int(order[0])
        return pb.ClassifyResponse(
            label=best, class_name=info.classes[best], confidence=float(p[best]), top_k=top if r.top_k else [],
            exit_index=a.exit_index, exit_layer=info.exits[a.exit_index].layer, stop_reason=REASON_ENUM[a.reason],
            server_latency_ms=1000 * a.latency_s, budget_met=a.budget_met, model=info.name,
            model_version=info.version, request_id=r.request_id)

    # --- errors: the one place that maps domain errors to status codes ---------------------------------

    async def _guard(self, context, model: str, coro, count: bool = True, images: int = 1, method: str = "",
                     request_id=None):
        return await guard(self.app, context, model, coro, count, images, surface="auxnet.v1", method=method,
                           request_id=request_id)


def model_info_message(info, thresholds: list[float], latency_ms_batch1: list[float],
                       latency_ms_per_image_batched: list[float], backend: str, max_batch: int) -> pb.ModelInfo:
    """GetModelInfo's answer: the manifest's fields (`info`, a loaded ModelInfo) with the engine's figures of now
    (thresholds after any adaptation, measured latencies per exit). Apart so that a test builds it from any
    manifest that loads (tests/server/test_manifest_fuzz.py)."""
    exits = [pb.ExitInfo(index=e.index, layer=e.layer, params=e.params, mflops=e.mflops, val_top1=e.val_top1,
                         temperature=e.temperature, default_threshold=t, latency_ms_batch1=b1,
                         latency_ms_per_image_batched=per_image)
             for e, t, b1, per_image in zip(info.exits, thresholds, latency_ms_batch1, latency_ms_per_image_batched)]
    m = info.manifest
    return pb.ModelInfo(name=info.name, version=info.version, architecture=m["architecture"],
                        classes=list(info.classes), input_shape=list(info.input_shape), exits=exits,
                        training_method=str(m.get("training", {}).get("method", "")),
                        dataset=str(m.get("training", {}).get("dataset", "")),
                        policy_val_accuracy=float(m["policy"].get("val_accuracy", 0.0)),
                        policy_mean_mflops=float(m["policy"].get("mean_mflops", 0.0)),
                        backend=backend, max_batch_size=max_batch, precision=info.precision, policy_score=info.policy_score)


class CallSnapshot:
    """What `guard` asks of a call (its peer, the time left), answered from values taken when the call began, for
    work that may outlive the call (a stream's requests, a progressive answer's task): grpc's call object must not
    be used once the call has ended (its peer() crashed the process when a request cancelled with its stream was
    logged)."""

    def __init__(self, context):
        self._peer = context.peer()
        remaining = context.time_remaining()
        self.deadline = None if remaining is None else time.monotonic() + remaining

    def peer(self) -> str:
        return self._peer

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


async def guard(app, context, model: str, coro, counted: bool = True, images=1, surface: str = "auxnet.v1",
                method: str = "", answers: Callable[[], list[Answer]] | None = None, request_id=None,
                fail: Callable[[grpc.StatusCode, str], Awaitable[None]] | None = None):
    """Await `coro`; map domain errors to gRPC status codes and count each outcome once (for every gRPC surface),
    in the access log too if one is kept. `images`: how many to count, or a function saying so once the request
    is parsed (never a count that a malformed request declares: a shape of 2**62 images must not reach a counter).
    `answers`: where the access log finds the engine's answers when `coro`'s result does not carry them (v2).
    `fail`: how an error reaches the client (default: the call's status; a stream's request answers in-band)."""
    started = time.monotonic()
    if fail is None:
        fail = lambda code, message: _abort(context, code, message)  # noqa: E731

    def outcome(code: str, message: str | None = None, result=None) -> None:
        if not counted:
            return
        n = images() if callable(images) else images
        count_images(app, model, code, n, surface)
        if app.access_log is not None:
            exits = answer_exits(answers()) if answers is not None and code == "OK" else _exits(result)
            app.access_log.record(surface, method, model or app.default_model_name(), code, n, started, context.peer(),
                                  message, *exits, request_id=request_id() if callable(request_id) else request_id)

    try:
        result = await coro
    except ServingError as e:
        outcome(e.code.name, str(e))
        await fail(e.code, str(e))
        return None
    except asyncio.CancelledError:  # the client cancelled or its deadline passed
        remaining = context.time_remaining()
        outcome("DEADLINE_EXCEEDED" if remaining is not None and remaining < DEADLINE_SLACK_S else "CANCELLED")
        raise
    except Exception as e:  # noqa: BLE001 - nothing may crash the process; log it, answer INTERNAL
        log.exception("internal error")
        outcome("INTERNAL", f"internal error: {type(e).__name__}: {e}")
        await fail(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}")
        return None
    outcome("OK", result=result)
    return result


def answer_exits(answers: list[Answer]) -> tuple[list[int], list[str]]:
    """The exits and stop reasons of the engine's answers, for the access log."""
    return [a.exit_index for a in answers], [a.reason for a in answers]


def _exits(result) -> tuple[list[int] | None, list[str] | None]:
    """The exits and stop reasons of an auxnet.v1 answer, for the access log (other answers: none)."""
    responses = [result] if isinstance(result, pb.ClassifyResponse) else \
        list(result.responses) if isinstance(result, pb.ClassifyBatchResponse) else None
    if responses is None:
        return None, None
    return [r.exit_index for r in responses], [STOP_REASONS.get(r.stop_reason, "?") for r in responses]


async def _abort(context, code: grpc.StatusCode, message: str) -> None:
    """Send the error status; if the client already went away (deadline, cancel) there is no one to tell."""
    try:
        await context.abort(code, message)
    except grpc.aio.AbortError:
        raise
    except Exception:  # noqa: BLE001 - grpc raises ExecuteBatchError on a call that is already over
        log.debug("client gone before its %s status could be sent", code.name)
