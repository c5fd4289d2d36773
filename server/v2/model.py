"""The model as the Open Inference Protocol sees it, independent of gRPC or HTTP: metadata, the inputs
accepted, the early-exit parameters, and the outputs. Both surfaces call `infer` and give the same answers
and messages as auxnet.v1 `Classify` (validation and decoding are shared through server/requests.py).

Inputs (exactly one per request; N images, each scheduled like a Classify of its own):
  image        BYTES [N] or [N,1]  encoded image files (PNG, JPEG, WebP, BMP, GIF, TIFF)
  pixels       UINT8 [N,H,W,C]     C = 1 (gray), 3 (RGB) or 4 (RGBA, alpha ignored); resized to the model's size
  pixels_fp32  FP32  [N,H,W,C]     the same in [0, 1]
  input        FP32  [N,3,H,W]     the model's own normalised input
Outputs: see OUTPUT_DOCS."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import numpy as np

from server.decode import decode_raw, to_model_input
from server.engine import ModelEngine
from server.errors import InvalidInput, UnknownModel
from server.jobs import Answer
from server.requests import ExitControls, decode_where_cheap, encoded_image, prepare_all
from server.v2.tensors import BYTES, Tensor, to_raw

SERVER_NAME = "auxnet-serving"
PLATFORM = "auxnet_early_exit"
# schedule_policy: the request parameters `priority` (--priority-levels) and `timeout` (a deadline), as Triton's.
EXTENSIONS = ("binary_tensor_data", "parameters", "early_exit", "statistics", "classification", "schedule_policy", "trace",
              "model_repository", "model_repository(unload_dependents)", "logging")


def extensions(app) -> list[str]:
    """The server metadata's extensions: system shared memory only where --allow-client-shm turned it on."""
    return [*EXTENSIONS, *(["system_shared_memory"] if app.shared_memory.allowed else [])]
# Triton's classification extension: an output requested with the parameter "classification": k comes back as
# BYTES [N, min(k, classes)], the k highest values of each row as "<value>:<index>:<label>", the value written as
# C's %f (what Triton's std::to_string gives). Only 'probabilities' holds a value per class.
CLASSIFIED_OUTPUT = "probabilities"
OUTPUT_DOCS = {
    "label": "INT64 [N] top-1 class index",
    "class_name": "BYTES [N] top-1 class name",
    "confidence": "FP32 [N] calibrated (temperature-scaled) top-1 probability at the exit that answered",
    "probabilities": "FP32 [N,classes] calibrated class probabilities (only when requested by name; with the "
                     "classification parameter k, BYTES [N,k] of the top k classes)",
    "exit_index": "INT32 [N] exit that answered, 0 = shallowest",
    "exit_layer": "INT32 [N] network layer of that exit",
    "stop_reason": "BYTES [N] confidence | budget | final | max_exit (continued: a progressive request's answer "
                   "from an exit it passed)",
    "server_latency_ms": "FP32 [N] arrival to answer, in the server",
    "budget_met": "BOOL [N] answered within budget_ms (true without a budget)",
}
DEFAULT_OUTPUTS = tuple(n for n in OUTPUT_DOCS if n != "probabilities")
# Request parameters: the early-exit controls, plus what Triton's clients send on their own.
CONTROL_TYPES = {"budget_ms": "number", "min_confidence": "number", "max_exit": "integer", "calibrated_policy": "bool"}
CLIENT_PARAMETERS = {"timeout": "integer",  # Triton: the request's timeout in microseconds; a deadline here
                     "priority": "integer",  # Triton's schedule policy: 1 highest, 0 default (--priority-levels)
                     "binary_data_output": "bool"}  # HTTP: every output in binary form
# Parameters of the streaming RPC only (Triton's ModelStreamInfer, server/v2/stream.py).
STREAM_PARAMETERS = {"progressive": "bool",  # also answer from every exit passed on the way to the one that stops
                     # tritonclient's enable_empty_final_response: accepted and ignored, since every response of a
                     # request here carries outputs and the last one says so (triton_final_response = true)
                     "triton_enable_empty_final_response": "bool"}


def version_check(engine: ModelEngine, version: str) -> None:
    if version and version != engine.info.version:
        raise UnknownModel(f"model {engine.info.name!r} version {version[:64]!r} is not loaded; serving version "
                           f"{engine.info.version!r}")


def resolve(app, name: str, version: str = "") -> ModelEngine:
    """The engine for a protocol request: the name is required (the URL and the spec both carry it)."""
    if not name:
        raise UnknownModel(f"model_name is empty; loaded: {sorted(app.engines)}")
    engine = app.engine_for(name)
    version_check(engine, version)
    return engine


def statistics(app, name: str = "", version: str = "") -> dict:
    """Triton's statistics extension: {"model_stats": [...]} for the named model (every loaded one when the name
    is empty), its figures as server/statistics.py counts them."""
    if name:
        engines = [resolve(app, name, version)]
    elif version:
        raise InvalidInput("a model version needs a model name")
    else:
        engines = [app.engines[n] for n in sorted(app.engines)]
    return {"model_stats": [e.stats.to_triton(e.info.name, e.info.version) for e in engines]}


INPUT_TYPES = {"image": BYTES, "pixels": "UINT8", "pixels_fp32": "FP32", "input": "FP32"}
VALID_INPUTS = ", ".join(INPUT_TYPES)


def input_metadata(engine: ModelEngine) -> list[dict]:
    c, h, w = engine.info.input_shape
    shapes = {"image": [-1], "pixels": [-1, -1, -1, -1], "pixels_fp32": [-1, -1, -1, -1], "input": [-1, c, h, w]}
    return [{"name": n, "datatype": t, "shape": shapes[n]} for n, t in INPUT_TYPES.items()]


def output_metadata(engine: ModelEngine) -> list[dict]:
    n_classes = len(engine.info.classes)
    out = []
    for name, doc in OUTPUT_DOCS.items():
        out.append({"name": name, "datatype": doc.split()[0], "shape": [-1, n_classes] if name == "probabilities" else [-1]})
    return out


def metadata(engine: ModelEngine) -> dict:
    return {"name": engine.info.name, "versions": [engine.info.version], "platform": PLATFORM,
            "inputs": input_metadata(engine), "outputs": output_metadata(engine)}


TRITON_TYPES = {"BYTES": "TYPE_STRING", "BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "INT32": "TYPE_INT32",
                "INT64": "TYPE_INT64", "FP32": "TYPE_FP32"}


def triton_config(engine: ModelEngine) -> dict:
    """Triton's model configuration (its JSON form) for Triton's clients and tools: dims without the batch
    dimension; each request sends exactly one of the (optional) inputs; per-image outputs are [1] reshaped
    to a scalar per image, as Triton writes them. max_batch_size is the batching cap of each exit (a request
    may carry more images, up to the in-flight limit: each is scheduled like one request)."""
    info, cfg = engine.info, engine.cfg
    c, h, w = info.input_shape
    inputs = [("image", "BYTES", "FORMAT_NONE", [1]), ("pixels", "UINT8", "FORMAT_NHWC", [-1, -1, -1]),
              ("pixels_fp32", "FP32", "FORMAT_NHWC", [-1, -1, -1]), ("input", "FP32", "FORMAT_NCHW", [c, h, w])]
    outputs = []
    for o in output_metadata(engine):
        entry = {"name": o["name"], "data_type": TRITON_TYPES[o["datatype"]]}
        if o["name"] == "probabilities":
            entry["dims"] = [len(info.classes)]
        else:
            entry.update(dims=[1], reshape={"shape": []})
        outputs.append(entry)
    return {
        "name": info.name, "platform": PLATFORM, "backend": "auxnet", "max_batch_size": cfg.max_batch,
        "input": [{"name": n, "data_type": TRITON_TYPES[t], "format": f, "dims": d, "optional": True} for n, t, f, d in inputs],
        "output": outputs,
        "dynamic_batching": {"max_queue_delay_microseconds": str(int(cfg.max_queue_delay_ms * 1000)),
                             **({"priority_levels": str(cfg.priority_levels),
                                 "default_priority_level": str(engine.priority_level(0))} if cfg.priority_levels > 1 else {}),
                             **queue_policy_config(cfg)},
        "parameters": {"exit_layers": {"string_value": ",".join(str(e.layer) for e in info.exits)},
                       "policy_thresholds": {"string_value": ",".join(f"{engine.policy_threshold(e.index):.4g}"
                                                                      for e in info.exits[:-1])},
                       "policy_score": {"string_value": info.policy_score},
                       "max_images_per_request": {"string_value": str(cfg.max_inflight)},
                       "precision": {"string_value": info.precision}},
    }


def queue_policy_config(cfg) -> dict:
    """The queue policies as Triton's model configuration states them: the default, and each level whose own differs
    in priority_queue_policy (keys are 64-bit numbers: strings in protobuf JSON)."""
    policies = cfg.queue_policies
    if policies is None:
        return {}
    own = {str(level): p.triton() for level, p in enumerate(policies.levels, 1) if p != policies.default}
    return {"default_queue_policy": policies.default.triton(), **({"priority_queue_policy": own} if own else {})}


def parse_parameters(params: dict, stream: bool = False) -> tuple[ExitControls, float | None, bool]:
    """Request parameters -> (controls, timeout in seconds or None, binary_data_output). Unknown names and
    wrong types are refused by name: a misspelt budget must not be ignored silently. `stream`: the request came
    on ModelStreamInfer, where STREAM_PARAMETERS are valid too (the caller reads them)."""
    known = {**CONTROL_TYPES, **CLIENT_PARAMETERS, **(STREAM_PARAMETERS if stream else {})}
    for key, value in params.items():
        if key in STREAM_PARAMETERS and not stream:
            raise InvalidInput(f"parameter {key!r} applies only to the streaming RPC ModelStreamInfer (gRPC), which "
                               "can send more than one response per request")
        if key not in known:
            raise InvalidInput(f"unknown request parameter {key[:64]!r}; valid: {', '.join(known)}")
        kind = known[key]
        ok = (isinstance(value, bool) if kind == "bool" else
              isinstance(value, int) and not isinstance(value, bool) if kind == "integer" else
              isinstance(value, (int, float)) and not isinstance(value, bool))
        if not ok:
            raise InvalidInput(f"parameter {key!r} must be a {'boolean' if kind == 'bool' else kind}; got {value!r}"[:200])
    get = params.get
    if get("priority", 0) < 0:
        raise InvalidInput(f"parameter 'priority' must be 0 (the default level) or a level from 1 (highest); got {get('priority')}")
    controls = ExitControls(None if get("budget_ms") is None else float(get("budget_ms")),
                            None if get("min_confidence") is None else float(get("min_confidence")),
                            get("max_exit"), bool(get("calibrated_policy", False)), get("priority", 0))
    timeout = get("timeout")
    if timeout is not None and timeout <= 0:
        raise InvalidInput(f"parameter 'timeout' must be a positive number of microseconds; got {timeout}")
    return controls, None if timeout is None else timeout / 1e6, bool(get("binary_data_output", False))


def earliest(*ends: float | None) -> float | None:
    """The earliest of some deadlines (None: none)."""
    return min((e for e in ends if e is not None), default=None)


def image_count(inputs: list[Tensor]) -> int:
    """Images in a request, for counting outcomes (1 when the request is too malformed to tell)."""
    if len(inputs) != 1 or not inputs[0].shape:
        return 1
    t = inputs[0]  # its data matched its shape, but a shape like [2**62, 0, 0, 0] holds no image at all
    return max(1, min(t.shape[0], t.count))


def check_outputs(requested: list[tuple[str, object]]) -> list[tuple[str, int | None]]:
    """(name, classification count or None) of each requested output from (name, its "classification"
    parameter or None); refused, naming what is wrong, before any image is decoded."""
    checked = []
    for name, classification in requested:
        if name not in OUTPUT_DOCS:
            raise InvalidInput(f"output {name[:64]!r} does not exist; valid: {', '.join(OUTPUT_DOCS)}")
        checked.append((name, _classification_count(name, classification)))
    return checked


def _classification_count(name: str, value: object) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value == 0):
        return None  # 0 is how Triton's clients say "no classification" (InferRequestedOutput's class_count)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"output '{name}': parameter 'classification' must be a whole number of classes >= 1; "
                           f"got {str(value)[:32]!r}")
    if name != CLASSIFIED_OUTPUT:
        raise InvalidInput(f"output '{name}': classification applies to '{CLASSIFIED_OUTPUT}' (one value per class); "
                           f"'{name}' is {OUTPUT_DOCS[name].split(' ', 2)[0]} {OUTPUT_DOCS[name].split(' ', 2)[1]}")
    return value


async def infer(app, engine: ModelEngine, inputs: list[Tensor], controls: ExitControls, arrival: float,
                deadline: float | None, progress: Callable[[Answer], None] | None = None) -> list[Answer]:
    """Validate, decode every image (big ones on the decode threads), then schedule each image like a Classify.
    `progress` (progressive answers, one image only): gets the answer of every exit passed before the last."""
    controls.check(len(engine.info.exits))
    level = engine.priority_level(controls.priority)
    if progress is not None and len(inputs) == 1 and inputs[0].shape and inputs[0].shape[0] != 1:
        raise InvalidInput(f"a progressive request holds one image (its responses are that image's answers, exit by "
                           f"exit); got {inputs[0].shape[0]}: send one request per image on the stream")
    works = _image_works(app, engine, inputs, level)  # refuses, before any decode, more images than there is room for
    xs = await prepare_all((decode_where_cheap(app, w, px) for w, px in works), lambda i: f"input '{inputs[0].name}' image {i}")
    if len(xs) == 1:  # without gather's task (11 us in an idle loop): one image is the common request
        return [await engine.classify(*controls.classify_args(xs[0], arrival, deadline), progress=progress)]
    return list(await asyncio.gather(*(engine.classify(*controls.classify_args(x, arrival, deadline)) for x in xs)))


def _image_works(app, engine: ModelEngine, inputs: list[Tensor], level: int) -> list[tuple]:
    """One (work, pixels) per image: `work()` returns the normalised (C, H, W) array."""
    if len(inputs) != 1:
        raise InvalidInput(f"send exactly one input tensor (one of {VALID_INPUTS}); got {len(inputs)}")
    t = inputs[0]
    info, limits = engine.info, app.limits
    if t.name not in INPUT_TYPES:
        raise InvalidInput(f"input {t.name[:64]!r} does not exist; valid: {VALID_INPUTS}")
    if t.datatype != INPUT_TYPES[t.name]:
        hint = " (FP32 pixels in [0, 1] go in 'pixels_fp32')" if t.name == "pixels" and t.datatype == "FP32" else ""
        raise InvalidInput(f"input '{t.name}' must be {INPUT_TYPES[t.name]}; got {t.datatype}{hint}")
    if not t.shape or t.shape[0] == 0 or t.count == 0:
        raise InvalidInput(f"input '{t.name}' holds no image: its first dimension is the number of images and none "
                           f"may be 0 (shape {list(t.shape)})")
    engine.check_admission(t.shape[0], level)
    if t.name == "image":
        if len(t.shape) > 2 or (len(t.shape) == 2 and t.shape[1] != 1):
            raise InvalidInput(f"input 'image' must have shape [N] or [N,1] (one encoded file per image); got {list(t.shape)}")
        return [encoded_image(app, info, d) for d in t.data]
    if t.name == "input":
        if t.shape[1:] != tuple(info.input_shape):
            raise InvalidInput(f"input 'input' must have shape [N,{','.join(map(str, info.input_shape))}]; got {list(t.shape)}")
        return [((lambda x=x: _finite(np.ascontiguousarray(x, dtype=np.float32))), 0) for x in t.data]
    if len(t.shape) != 4:
        raise InvalidInput(f"input '{t.name}' must have shape [N,H,W,C] (row-major pixels); got {list(t.shape)}")
    _, h, w, c = t.shape
    as_float = INPUT_TYPES[t.name] == "FP32"
    # A byte view, not a.tobytes(): a 1024x1024 image is 3 MB that need not be copied once more.
    return [((lambda a=a: to_model_input(decode_raw(memoryview(np.ascontiguousarray(a)).cast("B"), h, w, c, as_float, limits),
                                         info.input_shape, info.mean, info.std)), h * w) for a in t.data]


def _finite(x: np.ndarray) -> np.ndarray:
    if not math.isfinite(float(x.sum())):
        raise InvalidInput(f"holds {int((~np.isfinite(x)).sum())} NaN or infinite values")
    return x


def place_in_shared_memory(shm, tensors: list[Tensor], targets: dict) -> dict:
    """Write each output that has a target to its shared memory region (server/shared_memory.py); returns
    name -> the parameters its response entry carries instead of data."""
    placed = {}
    for t in tensors:
        if t.name in targets:
            region, offset, size = targets[t.name]
            shm.write(t.name, targets[t.name], to_raw(t))
            placed[t.name] = {"shared_memory_region": region.name, "shared_memory_byte_size": size,
                              **({"shared_memory_offset": offset} if offset else {})}
    return placed


def outputs(engine: ModelEngine, answers: list[Answer], requested: list[tuple[str, int | None]]) -> list[Tensor]:
    """The requested outputs (all default ones when none is named), in the order asked; a classification
    count turns 'probabilities' into its top classes (EXTENSIONS)."""
    info = engine.info
    probs = np.stack([a.probs for a in answers]).astype(np.float32)
    best = probs.argmax(1)
    n = len(answers)
    values = {
        "label": lambda: best.astype(np.int64),
        "class_name": lambda: [info.classes[int(b)].encode() for b in best],
        "confidence": lambda: probs[np.arange(n), best],
        "probabilities": lambda: probs,
        "exit_index": lambda: np.array([a.exit_index for a in answers], np.int32),
        "exit_layer": lambda: np.array([info.exits[a.exit_index].layer for a in answers], np.int32),
        "stop_reason": lambda: [a.reason.encode() for a in answers],
        "server_latency_ms": lambda: np.array([1000 * a.latency_s for a in answers], np.float32),
        "budget_met": lambda: np.array([a.budget_met for a in answers], np.bool_),
    }
    out = []
    for name, count in requested or [(name, None) for name in DEFAULT_OUTPUTS]:
        if count is not None:
            out.append(Tensor(name, BYTES, (n, min(count, probs.shape[1])), top_classes(probs, count, info.classes)))
            continue
        data = values[name]()
        shape = (n, probs.shape[1]) if name == "probabilities" else (n,)
        out.append(Tensor(name, OUTPUT_DOCS[name].split()[0], shape, data))
    return out


def top_classes(probs: np.ndarray, count: int, classes: tuple[str, ...]) -> list[bytes]:
    """Row by row, the `count` largest values as b"<value>:<index>:<label>", largest first (equal values:
    lower index first)."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :count]
    return [f"{float(probs[i, j]):f}:{j}:{classes[j]}".encode() for i, row in enumerate(order) for j in row]
