"""What every request surface (auxnet.v1, Open Inference Protocol gRPC and HTTP) shares: the early-exit
controls with their validation, where a request is parsed and an image decoded (on the event loop only when
cheap), how the items of a many-image request are prepared, and how outcomes are counted. One place, so the
surfaces give the same answers and the same messages."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from server.decode import decode_encoded, probe, to_model_input
from server.errors import InvalidInput

MAX_BUDGET_MS = 3_600_000.0
DECODE_INLINE_MAX_BYTES = 64 * 1024  # bigger encoded images always decode on the decode threads
INLINE_MAX_PIXELS = 128 * 128  # and so does anything larger than this once decoded
PARSE_INLINE_MAX_BYTES = 64 * 1024  # v2 requests bigger than this are parsed on the decode threads
UNKNOWN_MODEL_LABEL = "_unknown"  # keeps the model label bounded when clients send arbitrary names


@dataclass(frozen=True)
class ExitControls:
    """Where a request may stop: a latency budget, a confidence threshold, the calibrated policy, a deepest exit."""

    budget_ms: float | None = None
    min_confidence: float | None = None
    max_exit: int | None = None
    calibrated_policy: bool = False
    priority: int = 0  # 0: the server's default level (ModelEngine.priority_level)

    def check(self, n_exits: int) -> None:
        """Raise InvalidInput naming the first control that is out of range."""
        b, c = self.budget_ms, self.min_confidence
        if b is not None and not (math.isfinite(b) and 0 < b <= MAX_BUDGET_MS):
            raise InvalidInput(f"budget_ms must be a positive number of milliseconds up to {MAX_BUDGET_MS:.0f}; got {b}")
        if c is not None and not (math.isfinite(c) and 0.0 <= c <= 1.0):
            raise InvalidInput(f"min_confidence must be in [0, 1]; got {c}")
        if self.calibrated_policy and c is not None:
            raise InvalidInput("set min_confidence or calibrated_policy, not both: the policy has its own threshold per exit")
        if self.max_exit is not None and not 0 <= self.max_exit < n_exits:
            raise InvalidInput(f"max_exit {self.max_exit} does not exist; valid: 0..{n_exits - 1}")

    def classify_args(self, x: np.ndarray, arrival: float, deadline: float | None) -> tuple:
        """The positional arguments of ModelEngine.classify."""
        return x, arrival, self.budget_ms, self.min_confidence, self.max_exit, deadline, self.calibrated_policy, self.priority


def encoded_image(app, info, data: bytes) -> tuple[Callable[[], np.ndarray], int]:
    """(work, pixels) of one encoded image file for model `info`: work() decodes and normalises it to the
    model's input; pixels says where (decode_where_cheap)."""
    limits = app.limits
    opened, pixels = encoded_pixels(data, limits.formats)
    return (lambda: to_model_input(decode_encoded(data, limits, size=info.input_shape[1:], opened=opened),
                                   info.input_shape, info.mean, info.std)), pixels


def encoded_pixels(data: bytes, formats: tuple[str, ...]) -> tuple[object | None, int]:
    """(opened image or None, pixels it declares), or 'too many to decode inline' when the file alone is big
    (then it is opened where it is decoded). `formats`: those accepted (ImageLimits.formats)."""
    return probe(data, formats) if len(data) <= DECODE_INLINE_MAX_BYTES else (None, INLINE_MAX_PIXELS + 1)


async def _inline_or_decode_threads(app, inline: bool, work: Callable):
    """`work()` here on the event loop when it is cheap, else on the decode threads (lowest priority, few,
    never the segment threads): expensive requests wait for each other, and neither the loop nor the
    segments wait for them."""
    if inline:
        return work()
    return await asyncio.get_running_loop().run_in_executor(app.decode_executor, work)


async def decode_where_cheap(app, work: Callable[[], np.ndarray], pixels: int) -> np.ndarray:
    """Decode on the loop only an image that is small once decoded (a 4096x4096 PNG can compress to 49 KB)."""
    return await _inline_or_decode_threads(app, pixels <= INLINE_MAX_PIXELS, work)


async def prepare_all(awaitables, name_of: Callable[[int], str]) -> list:
    """Await every item's validation and decode together (big ones on the decode threads); only if all
    succeed is anything computed. The first invalid item fails the call, named by `name_of(index)`."""
    awaitables = list(awaitables)
    if len(awaitables) == 1:  # the common case, without gather's task per item (11 us in an idle loop)
        try:
            return [await awaitables[0]]
        except InvalidInput as e:
            raise InvalidInput(f"{name_of(0)}: {e}") from e
    outcomes = await asyncio.gather(*awaitables, return_exceptions=True)
    for i, o in enumerate(outcomes):
        if isinstance(o, InvalidInput):
            raise InvalidInput(f"{name_of(i)}: {o}") from o
    for o in outcomes:
        if isinstance(o, BaseException):
            raise o
    return outcomes


async def parse_where_cheap(app, nbytes: int, work: Callable):
    """Parse on the loop only a small request: 18 MB of JSON numbers takes ~0.2 s and twice its size in
    Python objects (bench/json_parse_cost.py): on the few decode threads, the loop never stalls that long and
    few bodies are expanded in memory at once."""
    return await _inline_or_decode_threads(app, nbytes <= PARSE_INLINE_MAX_BYTES, work)


def model_label(app, model: str) -> str:
    """The `model` label of a request's metrics: bounded to the loaded names."""
    if model in app.engines:
        return model
    return (app.default_model_name() if not model else "") or UNKNOWN_MODEL_LABEL


def count(app, model: str, code: str, images: int = 1, surface: str = "auxnet.v1") -> None:
    """auxnet_requests_total (images); surface: auxnet.v1, v2-grpc or v2-http. And Triton's per-request
    nv_inference_request_success / _failure, for a loaded model (server/triton_metrics.py)."""
    label = model_label(app, model)
    app.metrics.requests.labels(label, surface, code).inc(images)
    engine = app.engines.get(label)
    if engine is not None:
        app.metrics.triton.request(label, engine.info.version, code)
