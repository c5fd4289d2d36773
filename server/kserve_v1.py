"""KServe's V1 data plane (TensorFlow Serving's REST API), on the HTTP port beside the Open Inference Protocol: what
an InferenceService client speaking `protocolVersion: v1` sends keeps working.

    GET  /v1/models                    {"models": [names]}
    GET  /v1/models/{model}            {"name": model, "ready": bool} (404 for a model not loaded)
    POST /v1/models/{model}:predict    {"instances": [...]} or {"inputs": [...]} -> {"predictions": [...]}
    POST /v1/models/{model}:explain    :predict's answers and what every exit said of each image (server/explain.py)

An instance is one image: an encoded file as TensorFlow Serving's binary form `{"b64": "..."}`, as a named input
holding it (`{"image_bytes": {"b64": "..."}}`, any one name, with an optional "key" that the prediction echoes, as
TensorFlow Serving does), or as TorchServe's KServe form `{"data": "<base64>"}`; or raw pixels, a nested list
[H][W][C] of integers 0-255 (C = 1, 3 or 4), every instance of a request the same shape (TensorFlow Serving's row
format wants that). `"inputs"` (the columnar form) takes the same list, or an object of one named list. Early exit's
controls ride in an optional top-level "parameters" object, named as in the Open Inference Protocol (`budget_ms`,
`min_confidence`, `max_exit`, `calibrated_policy`, `priority`, `timeout` in microseconds) plus `top_k`; any other
top-level field or parameter is refused by name. Each prediction: {"class", "class_index", "probability",
"probabilities" (every class, in the model's order; with top_k instead "top_k": [{"class", "class_index",
"probability"}] most probable first), "exit_index", "exit_layer", "stop_reason", "budget_met"} (+ "key").
Errors as KServe's Python server answers them: {"error": message}, with the Open Inference Protocol's statuses.
The images are scheduled exactly as an Open Inference Protocol request of the same images (server/v2/model.py's
infer): one path, the same answers. Counted under surface="kserve-v1".
"""

from __future__ import annotations

import base64
import binascii
import json

import numpy as np
from aiohttp import web

from server.errors import InvalidInput, UnknownModel
from server.explain import explain
from server.requests import parse_where_cheap
from server.v2 import model as v2
from server.v2.tensors import BYTES, Tensor

SURFACE = "kserve-v1"
TOP_LEVEL = {"instances", "inputs", "parameters", "signature_name"}  # signature_name: TF Serving's, only "serving_default"
PARAMETERS = {"budget_ms", "min_confidence", "max_exit", "calibrated_policy", "priority", "timeout", "top_k"}
FILE_KEYS = ("data",)  # TorchServe's KServe wrapper sends {"data": "<base64>"}


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def add_routes(router: web.UrlDispatcher, http) -> None:
    """`http`: the Open Inference Protocol's HTTP surface whose port, in-flight limit and body reading these share."""
    api = KServeV1(http)
    router.add_get("/v1/models", api.models)
    router.add_get("/v1/models/{model:[^/:]+}", api.model_ready)
    router.add_post("/v1/models/{model:[^/:]+}:predict", api.predict)
    router.add_post("/v1/models/{model:[^/:]+}:explain", api.explain)


class KServeV1:
    def __init__(self, http):
        self.http = http
        self.app = http.app

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"models": sorted(self.app.engines)})

    async def model_ready(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        try:
            engine = self.app.engine_for(name)
        except UnknownModel as e:
            return error(404, str(e))
        return web.json_response({"name": name, "ready": engine.accepting and not engine.stopped})

    async def explain(self, request: web.Request) -> web.Response:
        """:predict's answers beside what every exit said of each image (server/explain.py)."""
        return await self.predict(request, explaining=True)

    async def predict(self, request: web.Request, explaining: bool = False) -> web.Response:
        name = request.match_info["model"]

        async def run(arrival: float, attempt) -> tuple[web.Response, list]:
            engine = self.app.engine_for(name)
            if not engine.accepting or engine.stopped:
                engine.check_admission()  # draining: refuse before reading the body
            body = await self.http.read_body(request)
            tensor, keys, params = await parse_where_cheap(self.app, len(body), lambda: parse_body(body))
            attempt.images = tensor.shape[0]
            top_k = params.pop("top_k", None)
            if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(engine.info.classes)):
                raise InvalidInput(f"parameter 'top_k' must be a whole number from 1 to {len(engine.info.classes)} (the "
                                   f"model's classes); got {json.dumps(top_k)[:40]}")
            controls, timeout_s, _ = v2.parse_parameters(params)
            deadline = arrival + timeout_s if timeout_s is not None else None
            if explaining:
                answers, explanations = await explain(self.app, engine, tensor, controls, arrival, deadline)
                for e, key in zip(explanations, keys):
                    if key is not None:
                        e["key"] = key
                return web.json_response({"predictions": predictions(engine.info, answers, keys, top_k),
                                          "explanations": explanations}), answers
            answers = await v2.infer(self.app, engine, [tensor], controls, arrival, deadline)
            return web.json_response({"predictions": predictions(engine.info, answers, keys, top_k)}), answers

        return await self.http.guarded(request, name, SURFACE, run, error)


def parse_body(body: bytes) -> tuple[Tensor, list, dict]:
    """(the images as one Open Inference Protocol input tensor, each instance's key or None, the parameters)."""
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInput(f"the body is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidInput('the body must be a JSON object: {"instances": [...]}')
    unknown = sorted(set(doc) - TOP_LEVEL)
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0][:64]!r}; valid: instances (or inputs), parameters, signature_name")
    if doc.get("signature_name", "serving_default") != "serving_default":
        raise InvalidInput(f"signature_name {str(doc['signature_name'])[:64]!r} does not exist; the model has serving_default")
    if ("instances" in doc) == ("inputs" in doc):
        raise InvalidInput('send the images as "instances" (a list) or "inputs", one of the two')
    instances = doc["instances"] if "instances" in doc else _columnar(doc["inputs"])
    if not isinstance(instances, list) or not instances:
        raise InvalidInput(f"'{'instances' if 'instances' in doc else 'inputs'}' must be a non-empty list of images")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("'parameters' must be a JSON object")
    for key in params:
        if key not in PARAMETERS:
            raise InvalidInput(f"unknown parameter {key[:64]!r}; valid: {', '.join(sorted(PARAMETERS))}")
    tensor, keys = _images(instances)
    return tensor, keys, dict(params)


def _columnar(inputs):
    """TensorFlow Serving's columnar form: the list itself, or {name: list} with one name."""
    if isinstance(inputs, dict):
        if len(inputs) != 1:
            raise InvalidInput(f"'inputs' as an object names one input (the images); got {len(inputs)}: {sorted(inputs)[:5]}")
        return next(iter(inputs.values()))
    return inputs


def _images(instances: list) -> tuple[Tensor, list]:
    files, pixels, keys = [], [], []
    for i, inst in enumerate(instances):
        if isinstance(inst, list):
            pixels.append((i, inst))
            keys.append(None)
        else:
            data, key = _file(i, inst)
            files.append((i, data))
            keys.append(key)
    if files and pixels:
        raise InvalidInput(f"instance {pixels[0][0]} is a pixel array and instance {files[0][0]} an image file: send one "
                           "kind per request")
    if files:
        return Tensor("image", BYTES, (len(files),), [data for _, data in files]), keys
    return _pixel_tensor(pixels), keys


def _file(i: int, inst) -> tuple[bytes, object]:
    """(the image file's bytes, its key or None) of an instance that is an object."""
    if isinstance(inst, str):
        raise InvalidInput(f'instance {i} is a string: send an image file as {{"b64": "<base64>"}} (TensorFlow Serving\'s '
                           "binary form) or a pixel array [H][W][C]")
    if not isinstance(inst, dict):
        raise InvalidInput(f"instance {i} must be an image file ({{\"b64\": ...}}) or a pixel array; got {type(inst).__name__}")
    key = inst.get("key")
    rest = {k: v for k, v in inst.items() if k != "key"}
    if set(rest) == {"b64"}:
        return _b64(i, rest["b64"]), key
    if len(rest) == 1:
        (name, value), = rest.items()
        if isinstance(value, dict) and set(value) == {"b64"}:
            return _b64(i, value["b64"]), key
        if name in FILE_KEYS and isinstance(value, str):
            return _b64(i, value), key
    raise InvalidInput(f'instance {i}: an image file is {{"b64": "<base64>"}}, {{"NAME": {{"b64": "<base64>"}}}} or '
                       f'{{"data": "<base64>"}} (with an optional "key"); got the fields {sorted(inst)[:6]}')


def _b64(i: int, text) -> bytes:
    if not isinstance(text, str):
        raise InvalidInput(f"instance {i}: b64 must be a string of base64; got {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidInput(f"instance {i}: b64 is not base64 ({e})") from None


def _pixel_tensor(pixels: list[tuple[int, list]]) -> Tensor:
    """Pixel arrays as the Open Inference Protocol's 'pixels' UINT8 [N,H,W,C] tensor."""
    arrays = []
    for i, inst in pixels:
        try:
            a = np.asarray(inst)
        except ValueError:
            raise InvalidInput(f"instance {i}: a pixel array must be [H][W][C] with rows of one length") from None
        if a.ndim != 3 or a.size == 0:
            raise InvalidInput(f"instance {i}: a pixel array must be [H][W][C] of integers 0-255; got {a.ndim} dimensions "
                               f"(shape {list(a.shape)})")
        if a.dtype.kind not in "iu":
            what = {"f": "numbers with fractions", "b": "booleans", "U": "strings"}.get(a.dtype.kind, f"{a.dtype} values")
            raise InvalidInput(f"instance {i}: a pixel array must hold integers 0-255; got {what}")
        if a.min() < 0 or a.max() > 255:
            raise InvalidInput(f"instance {i}: pixel values must be 0-255; got {int(a.min())}..{int(a.max())}")
        if arrays and a.shape != arrays[0].shape:
            raise InvalidInput(f"instance {i} has shape {list(a.shape)} where instance {pixels[0][0]} has "
                               f"{list(arrays[0].shape)}: every pixel array of a request has one shape")
        arrays.append(a.astype(np.uint8))
    stacked = np.stack(arrays)
    return Tensor("pixels", "UINT8", stacked.shape, stacked)


def predictions(info, answers, keys: list, top_k: int | None) -> list[dict]:
    out = []
    for answer, key in zip(answers, keys):
        probs = answer.probs
        best = int(np.argmax(probs))
        p = {"class": info.classes[best], "class_index": best, "probability": float(probs[best])}
        if top_k is None:
            p["probabilities"] = [float(v) for v in probs]
        else:
            order = np.argsort(-probs, kind="stable")[:top_k]
            p["top_k"] = [{"class": info.classes[c], "class_index": int(c), "probability": float(probs[c])} for c in order]
        p.update(exit_index=answer.exit_index, exit_layer=info.exits[answer.exit_index].layer, stop_reason=answer.reason,
                 budget_met=answer.budget_met)
        if key is not None:
            p["key"] = key
        out.append(p)
    return out
