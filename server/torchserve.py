"""TorchServe's inference API, on the HTTP port (--http-port) beside the Open Inference Protocol: what TorchServe
users already send keeps working (`curl host:8000/predictions/MODEL -T kitten.jpg`, `-F "data=@kitten.jpg"`).

    GET  /ping                                    {"status": "Healthy"} (200), or "Unhealthy" (500) while not ready
    POST|PUT /predictions/{model}[/{version}]     one image file: the raw body, or one multipart/form-data part
    POST|PUT /explanations/{model}[/{version}]    the same image: what every exit said of it (server/explain.py)

The answer is TorchServe's image classifier's: a JSON object of the top-k class names and their probabilities,
most probable first (k = 5 by default, as its handler's topk). Early exit rides along where a TorchServe client
does not look: the controls as query parameters (`?budget_ms=5`, `min_confidence`, `max_exit`,
`calibrated_policy=true`, `priority`, and `top_k`), validated as Classify's, any other name refused by name; where
the answer stopped in response headers (X-AuxNet-Exit-Index, -Exit-Layer, -Stop-Reason, -Budget-Met,
-Server-Latency-Ms, -Model-Version). Errors in TorchServe's form: {"code": 404, "type": "ModelNotFoundException",
"message": "..."}. Counted under surface="torchserve"; a client that closes its connection cancels its request.
"""

from __future__ import annotations

import email.parser
import email.policy
import logging
import math

from aiohttp import web

from server.errors import InvalidInput
from server.explain import explain
from server.requests import ExitControls, decode_where_cheap, encoded_image, parse_where_cheap
from server.v2.tensors import BYTES, Tensor

log = logging.getLogger("auxnet.server")
SURFACE = "torchserve"
DEFAULT_TOP_K = 5  # TorchServe's ImageClassifier.topk
QUERY_TYPES = {"budget_ms": float, "min_confidence": float, "max_exit": int, "calibrated_policy": bool, "priority": int,
               "top_k": int}
EXCEPTION_TYPES = {400: "BadRequestException", 404: "ModelNotFoundException", 408: "RequestTimeoutException",
                   413: "RequestEntityTooLargeException", 429: "ServiceUnavailableException",
                   503: "ServiceUnavailableException", 504: "ServiceUnavailableException"}


def error(status: int, message: str) -> web.Response:
    """TorchServe's error body."""
    return web.json_response({"code": status, "type": EXCEPTION_TYPES.get(status, "InternalServerException"),
                              "message": message}, status=status)


def add_routes(router: web.UrlDispatcher, http) -> None:
    """`http`: the Open Inference Protocol's HTTP surface whose port, in-flight limit and body reading these share."""
    api = TorchServeAPI(http)
    router.add_get("/ping", api.ping)
    for path in ("/predictions/{model}", "/predictions/{model}/{version}"):
        router.add_post(path, api.predictions)
        router.add_put(path, api.predictions)  # curl -T FILE sends a PUT
    for path in ("/explanations/{model}", "/explanations/{model}/{version}"):
        router.add_post(path, api.explanations)
        router.add_put(path, api.explanations)


class TorchServeAPI:
    def __init__(self, http):
        self.http = http
        self.app = http.app

    async def ping(self, request: web.Request) -> web.Response:
        healthy = self.app.ready()
        return web.json_response({"status": "Healthy" if healthy else "Unhealthy"}, status=200 if healthy else 500)

    async def predictions(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]

        async def run(arrival: float, attempt) -> tuple[web.Response, list]:
            engine, controls, top_k, data = await self._image_request(request, name)
            work, pixels = encoded_image(self.app, engine.info, data)
            x = await decode_where_cheap(self.app, work, pixels)
            answer = await engine.classify(*controls.classify_args(x, arrival, None))
            return answer_response(engine.info, answer, top_k), [answer]

        return await self.http.guarded(request, name, SURFACE, run, error)

    async def explanations(self, request: web.Request) -> web.Response:
        """TorchServe's explanations API for an early-exit network (server/explain.py): what every exit said of the
        image and where the rules stop it, the answer's own headers as /predictions gives them."""
        name = request.match_info["model"]

        async def run(arrival: float, attempt) -> tuple[web.Response, list]:
            engine, controls, top_k, data = await self._image_request(request, name)
            answers, explanations = await explain(self.app, engine, Tensor("image", BYTES, (1,), [data]), controls,
                                                  arrival, None)
            return web.json_response(explanations[0], headers=answer_headers(engine.info, answers[0])), answers

        return await self.http.guarded(request, name, SURFACE, run, error)

    async def _image_request(self, request: web.Request, name: str):
        """(engine, controls, top_k, the image file's bytes) of a /predictions or /explanations request, its version,
        query and admission checked before the body is read or decoded."""
        engine = self.app.engine_for(name)
        version = request.match_info.get("version", "")
        if version and version != engine.info.version:
            raise InvalidInput(f"model {name!r} serves version {engine.info.version!r}, not {version[:80]!r}")
        controls, top_k = query_controls(request.query, len(engine.info.classes))
        controls.check(len(engine.info.exits))
        engine.check_admission(1, engine.priority_level(controls.priority))
        body, content_type = await self.http.read_body(request), request.headers.get("Content-Type", "")
        if content_type.lower().startswith("multipart/"):
            # Python's parser takes 0.4 s for 10 MB: on the decode threads unless the body is small
            return engine, controls, top_k, await parse_where_cheap(self.app, len(body), lambda: image_file(body, content_type))
        return engine, controls, top_k, image_file(body, content_type)  # the body itself


def answer_response(info, answer, top_k: int) -> web.Response:
    """TorchServe's image classifier's body (the top-k {class: probability}); where it stopped in headers."""
    order = sorted(range(len(info.classes)), key=lambda c: -answer.probs[c])[:top_k]
    return web.json_response({info.classes[c]: float(answer.probs[c]) for c in order}, headers=answer_headers(info, answer))


def answer_headers(info, answer) -> dict[str, str]:
    """Where an answer stopped, for a client that looks (TorchServe's own clients read only the body)."""
    return {"X-AuxNet-Exit-Index": str(answer.exit_index), "X-AuxNet-Exit-Layer": str(info.exits[answer.exit_index].layer),
            "X-AuxNet-Stop-Reason": answer.reason, "X-AuxNet-Budget-Met": str(answer.budget_met).lower(),
            "X-AuxNet-Server-Latency-Ms": f"{1000 * answer.latency_s:.3f}", "X-AuxNet-Model-Version": info.version}


def query_controls(query, n_classes: int) -> tuple[ExitControls, int]:
    """The query string's early-exit controls and top-k; any other name, or a value of the wrong kind, refused."""
    values = {}
    for key in query:
        if key not in QUERY_TYPES:
            raise InvalidInput(f"unknown query parameter {key[:64]!r}; accepted: {sorted(QUERY_TYPES)}")
        if len(query.getall(key)) > 1:
            raise InvalidInput(f"query parameter {key!r} given {len(query.getall(key))} times")
        values[key] = _typed(key, query[key])
    top_k = values.pop("top_k", min(DEFAULT_TOP_K, n_classes))
    if not 1 <= top_k <= n_classes:
        raise InvalidInput(f"top_k {top_k} is out of range; valid: 1..{n_classes} (the model's classes)")
    return ExitControls(values.get("budget_ms"), values.get("min_confidence"), values.get("max_exit"),
                        values.get("calibrated_policy", False), values.get("priority", 0)), top_k


def _typed(key: str, text: str):
    kind = QUERY_TYPES[key]
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise InvalidInput(f"query parameter {key!r} must be true or false; got {text[:40]!r}")
        return text.lower() in ("true", "1")
    try:
        value = kind(text)
    except ValueError:
        raise InvalidInput(f"query parameter {key!r} must be {'an integer' if kind is int else 'a number'}; "
                           f"got {text[:40]!r}") from None
    if kind is float and not math.isfinite(value):
        raise InvalidInput(f"query parameter {key!r} must be a finite number; got {text[:40]!r}")
    return value


def image_file(body: bytes, content_type: str) -> bytes:
    """The image file a TorchServe client sent: the raw body (curl -T, --data-binary), or the one part of a
    multipart/form-data body (curl -F "data=@file")."""
    if not content_type.lower().startswith("multipart/"):
        if not body:
            raise InvalidInput("the request has no body: send the image file as the body (curl -T FILE) or as one "
                               "multipart/form-data part (curl -F data=@FILE)")
        return body
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise InvalidInput(f"the multipart body cannot be read (Content-Type {content_type[:80]!r}: a boundary?)")
    parts = [p for p in message.iter_parts() if p.get_content_disposition() in ("form-data", "attachment", None)]
    if len(parts) != 1:
        raise InvalidInput(f"one image per request (as TorchServe's image classifier); this one has {len(parts)} parts: "
                           "send one request per image, or several images in one /v2 infer request")
    data = parts[0].get_payload(decode=True)
    if not data:
        raise InvalidInput(f"the multipart part {parts[0].get_param('name', header='content-disposition')!r} is empty")
    return data
