"""The Open Inference Protocol over HTTP/REST, on its own port (aiohttp, on the server's event loop).

    GET  /v2/health/live, /v2/health/ready              liveness, readiness (Kubernetes probes; no token)
    GET  /v2                                            server metadata
    GET  /v2/models/{model}[/versions/{version}]        model metadata
    GET  /v2/models/{model}[/versions/{version}]/ready  model readiness (no token)
    GET  /v2/models/{model}[/versions/{version}]/config Triton's model configuration (Triton's clients ask)
    GET  /v2/models[/{model}[/versions/{version}]]/stats Triton's statistics extension (server/statistics.py)
    GET|POST /v2[/models/{model}]/trace/setting         Triton's trace extension (server/tracing.py)
    GET|POST /v2/logging                                Triton's logging extension (server/log_settings.py)
    GET  /v2/systemsharedmemory[/region/{r}]/status     Triton's system shared memory extension (server/shared_memory.py)
    POST /v2/systemsharedmemory/region/{r}/register, /v2/systemsharedmemory[/region/{r}]/unregister
    POST /v2/repository/index                           Triton's model repository extension (server/model_control.py)
    POST /v2/repository/models/{model}/load|unload      (the same)
    POST /v2/models/{model}[/versions/{version}]/infer  inference: JSON, or JSON + binary tensors
    GET /ping, POST /predictions/{model}[/{version}]    TorchServe's inference API (server/torchserve.py)
    GET /v1/models[/{model}], POST /v1/models/{model}:predict   KServe's V1 data plane (server/kserve_v1.py)

Binary-tensor extension (what tritonclient.http sends): the body is a JSON header of
`Inference-Header-Content-Length` bytes followed by the tensors, in input order, each input saying its
size in `parameters.binary_data_size`. Outputs come back the same way when the request sets
`binary_data_output` or an output's `binary_data`. Errors: {"error": message} with 400/401/404/413/429/
500/503/504, carrying the auxnet.v1 messages.

Why aiohttp: one well-kept package that is an asyncio HTTP server, so it shares the gRPC server's event
loop, engines and executors with no second framework (an ASGI stack would add a server, a framework and
their dependencies) and it parses HTTP, compression and TLS itself."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
import weakref
from dataclasses import dataclass

from aiohttp import web

from server import __version__, kserve_v1, torchserve
from server.connection_limits import DEFAULT_MAX_CONNECTIONS, ConnectionGuard, LimitedSite
from server.errors import InvalidInput, QueueFull, ServingError, http_status
from server.otel_context import INCOMING, from_headers
from server.requests import count, parse_where_cheap
from server.service import answer_exits
from server.tracing import setting_values
from server.v2 import model as v2
from server.v2.http_codec import encode_response, output_targets, parse_outputs, parse_request

log = logging.getLogger("auxnet.server")
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready", "/ping")  # and every .../ready: probes carry no credentials
BODY_TIMEOUT_S = 30.0  # a body trickling in slower than this holds a request slot: refuse it (408)
SURFACE = "v2-http"  # the surface label of auxnet_requests_total
HTTP_ERROR_CODES = {408: "DEADLINE_EXCEEDED", 413: "RESOURCE_EXHAUSTED"}  # metric code of aiohttp-raised errors
METHODS = {SURFACE: "infer", "torchserve": "predictions", "kserve-v1": "predict"}  # the access log's method per surface


@dataclass
class Attempt:
    """What an inference request has said of itself so far, for counting its outcome (guarded)."""
    images: int = 1
    request_id: str | None = None


def is_probe(request: web.Request) -> bool:
    """Paths an orchestrator's probes ask without credentials: health, readiness (v2's .../ready, KServe V1's
    GET /v1/models/NAME, which KServe probes a V1 predictor with)."""
    path = request.path
    return (path in OPEN_PATHS or path.endswith("/ready")
            or (request.method == "GET" and path.startswith("/v1/models/") and ":" not in path))


def error_response(status: int, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


class OpenInferenceHTTP:
    def __init__(self, app, max_concurrent: int):
        self.app = app
        self.max_concurrent = max_concurrent  # the gRPC port's core limit, the same here
        self.active = 0
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self.body_timeout_s = BODY_TIMEOUT_S
        self._born: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # transport -> its first request
        m = app.metrics
        self.guard = ConnectionGuard(getattr(app, "connection_cap", DEFAULT_MAX_CONNECTIONS), app.cfg.idle_timeout_s,
                                     on_refused=m.http_connections_refused.inc, on_count=m.http_connections.set,
                                     on_idle_closed=m.http_connections_idle_closed.inc)

    # --- lifecycle ------------------------------------------------------------------------------------

    def build(self) -> web.Application:
        a = web.Application(client_max_size=self.app.cfg.max_message_bytes, middlewares=self._middlewares())
        versioned = ["/v2/models/{model}", "/v2/models/{model}/versions/{version}"]
        a.router.add_get("/v2/health/live", self.live)
        a.router.add_get("/v2/health/ready", self.ready)
        a.router.add_get("/v2", self.server_metadata)
        a.router.add_get("/v2/models/stats", self.model_stats)  # before /v2/models/{model}, which would take it
        for path in ("/v2/trace/setting", "/v2/models/{model}/trace/setting"):  # Triton's trace extension
            a.router.add_get(path, self.trace_setting)
            a.router.add_post(path, self.trace_setting)
        for base in ("/v2/systemsharedmemory", "/v2/systemsharedmemory/region/{region}"):  # server/shared_memory.py
            a.router.add_get(base + "/status", self.shm_status)
            a.router.add_post(base + "/unregister", self.shm_unregister)
        a.router.add_post("/v2/systemsharedmemory/region/{region}/register", self.shm_register)
        a.router.add_get("/v2/logging", self.log_settings)  # Triton's logging extension
        a.router.add_post("/v2/logging", self.log_settings)
        a.router.add_post("/v2/repository/index", self.repository_index)  # Triton's model repository extension
        a.router.add_post("/v2/repository/models/{model}/load", self.repository_load)
        a.router.add_post("/v2/repository/models/{model}/unload", self.repository_unload)
        for base in versioned:
            a.router.add_get(base + "/stats", self.model_stats)
            a.router.add_get(base, self.model_metadata)
            a.router.add_get(base + "/ready", self.model_ready)
            a.router.add_get(base + "/config", self.model_config)
            a.router.add_post(base + "/infer", self.infer)
        torchserve.add_routes(a.router, self)
        kserve_v1.add_routes(a.router, self)
        return a

    async def start(self, host: str, port: int, reuse_port: bool) -> int:
        # handler_cancellation: a client that goes away (its own timeout, a closed connection) cancels its request
        # as a gRPC client's cancel does: the engine drops it before its next segment instead of computing an
        # answer nobody reads (aiohttp's default since 3.9 is to run the handler on to its end).
        self.runner = web.AppRunner(self.build(), access_log=None, shutdown_timeout=self.app.cfg.grace_s,
                                    handler_cancellation=True)
        await self.runner.setup()
        site = LimitedSite(self.runner, self.guard, host, port, ssl_context=self._ssl_context(), reuse_port=reuse_port or None)
        await site.start()
        self.guard.start()
        self.port = self.runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        await self.guard.stop()
        if self.runner is not None:
            await self.runner.cleanup()

    def _ssl_context(self) -> ssl.SSLContext | None:
        """The app's TLS files as a context that follows their rotation (server/credentials.py)."""
        return None if self.app.tls is None else self.app.tls.ssl_context()

    def _middlewares(self) -> list:
        """The connection-age check only where it is on: a middleware is one more call on every request."""
        return ([self.guard.middleware] + ([self._connection_age] if self.app.cfg.max_connection_age_s > 0 else [])
                + ([self._trace_context] if self.app.tracer.exporter is not None else []) + [self._guard])

    # --- every request: connection age, token, JSON errors ----------------------------------------------

    @web.middleware
    async def _connection_age(self, request: web.Request, handler):
        """--max-connection-age-s on this side too: the first response after a keep-alive connection has lived
        that long says `Connection: close`, so the client reconnects and a Service balances it anew (KServe
        sends the Open Inference Protocol's HTTP through one)."""
        response = await handler(request)
        age = self.app.cfg.max_connection_age_s
        if age > 0 and request.transport is not None:
            now = time.monotonic()
            if now - self._born.setdefault(request.transport, now) >= age:
                response.force_close()
        return response


    @web.middleware
    async def _trace_context(self, request: web.Request, handler):
        """Tracing in OpenTelemetry mode: the caller's W3C traceparent, for the engine to sample (server/otel_context.py)."""
        INCOMING.set(from_headers(request.headers))
        return await handler(request)

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        token = self.app.token
        if token is not None and not is_probe(request):
            got = request.headers.get("Authorization", "")
            if not token.matches(got):
                message = "missing or wrong bearer token in the 'Authorization' header"
                if self.app.access_log is not None:
                    self.app.access_log.record(SURFACE, f"{request.method} {request.path[:100]}",
                                               request.match_info.get("model", ""), "UNAUTHENTICATED", 0,
                                               time.monotonic(), request.remote or "", message)
                return error_response(401, message, {"WWW-Authenticate": "Bearer"})
        try:
            return await handler(request)
        except ServingError as e:  # the one place domain errors become HTTP statuses (inference counts its own)
            return error_response(http_status(e), str(e))
        except web.HTTPException as e:  # aiohttp's own: unknown path (404), wrong method (405), too large (413)
            if e.status < 400:
                raise
            text = e.text if e.text and not e.text.startswith("<") else e.reason
            if e.status == 404:
                text = f"no such endpoint: {request.method} {request.path[:100]}"
            return error_response(e.status, text)
        except Exception as e:  # noqa: BLE001 - a defect in any handler: logged, answered 500 in JSON, never aiohttp's page
            log.exception("internal error in %s %s", request.method, request.path[:100])
            return error_response(500, f"internal error: {type(e).__name__}")

    # --- health and metadata --------------------------------------------------------------------------

    async def live(self, request):
        return web.json_response({"live": True})

    async def ready(self, request):
        if self.app.ready():
            return web.json_response({"ready": True})
        return error_response(503, "server is shutting down or not ready")

    async def server_metadata(self, request):
        return web.json_response({"name": v2.SERVER_NAME, "version": __version__, "extensions": v2.extensions(self.app)})

    def _engine(self, request):
        """The model the path names (UnknownModel: 404 through _guard)."""
        return v2.resolve(self.app, request.match_info["model"], request.match_info.get("version", ""))

    async def model_metadata(self, request):
        return web.json_response(v2.metadata(self._engine(request)))

    async def model_config(self, request):
        """Triton's model configuration (not part of the protocol; Triton's clients and tools ask for it)."""
        return web.json_response(v2.triton_config(self._engine(request)))

    async def model_stats(self, request):
        """Triton's statistics extension (server/statistics.py): every model, or the one the path names."""
        return web.json_response(v2.statistics(self.app, request.match_info.get("model", ""),
                                               request.match_info.get("version", "")))

    async def trace_setting(self, request):
        """Triton's trace extension (server/tracing.py): GET reads, POST {setting: value, ...} changes them."""
        name = request.match_info.get("model", "")
        if name:
            v2.resolve(self.app, name, "")
        if request.method == "GET":
            return web.json_response(self.app.tracer.settings(name))
        try:
            doc = json.loads(await request.read() or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InvalidInput(f"trace settings: the body is not JSON: {e}") from None
        return web.json_response(await self.app.update_trace_settings(name, setting_values(doc)))

    async def shm_status(self, request):
        """Triton's system shared memory extension (server/shared_memory.py): every region, or the one named."""
        return web.json_response(self.app.shared_memory.status(request.match_info.get("region", "")))

    async def shm_register(self, request):
        doc = await _json_object(request, "shared memory register")
        fields = {"key": str, "offset": int, "byte_size": int}
        for key, kind in fields.items():
            value = doc.get(key, 0 if key == "offset" else None)
            if isinstance(value, bool) or not isinstance(value, kind) or (kind is int and value < 0):
                raise InvalidInput(f"shared memory register: '{key}' must be {'a string' if kind is str else 'a whole number >= 0'}"
                                   f"; got {json.dumps(value)[:40]}")
        if set(doc) - set(fields):
            raise InvalidInput(f"shared memory register: unknown field(s) {sorted(set(doc) - set(fields))[:8]}")
        await self.app.register_region(request.match_info["region"], doc["key"], doc.get("offset", 0), doc["byte_size"])
        return web.json_response({})

    async def shm_unregister(self, request):
        await self.app.unregister_region(request.match_info.get("region", ""))
        return web.json_response({})

    async def log_settings(self, request):
        """Triton's logging extension (server/log_settings.py): GET reads, POST {setting: value, ...} changes them."""
        control = self.app.log_control
        if request.method == "GET":
            return web.json_response(control.settings())
        return web.json_response(await self.app.update_log_settings(await _json_object(request, "log settings")))

    async def repository_index(self, request):
        """Triton's model repository extension (server/model_control.py): a JSON array, one object a model."""
        doc = await _json_object(request, "repository index")
        ready = doc.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidInput(f"repository index: 'ready' must be true or false; got {json.dumps(ready)[:40]}")
        if set(doc) - {"ready"}:
            raise InvalidInput(f"repository index: unknown field(s) {sorted(set(doc) - {'ready'})[:8]}; only 'ready'")
        return web.json_response(self.app.control.index("", ready))

    async def repository_load(self, request):
        await self.app.control.load(request.match_info["model"], "", await _repository_parameters(request, "load"))
        return web.json_response({})

    async def repository_unload(self, request):
        await self.app.control.unload(request.match_info["model"], "", await _repository_parameters(request, "unload"))
        return web.json_response({})

    async def model_ready(self, request):
        engine = self._engine(request)
        if engine.accepting and not engine.stopped:
            return web.json_response({"name": engine.info.name, "ready": True})
        return error_response(503, f"model {engine.info.name!r} is not ready (loading or shutting down)")

    # --- inference ------------------------------------------------------------------------------------

    async def infer(self, request: web.Request):
        name = request.match_info["model"]

        async def run(arrival: float, attempt: Attempt):
            engine = v2.resolve(self.app, name, request.match_info.get("version", ""))
            if not engine.accepting or engine.stopped:
                engine.check_admission()  # draining: refuse before reading the body
            body = await self.read_body(request)
            shm = self.app.shared_memory
            doc, inputs = await parse_where_cheap(self.app, len(body), lambda: parse_request(body, request.headers, shm))
            attempt.images = v2.image_count(inputs)
            attempt.request_id = str(doc["id"]) if doc.get("id") is not None else None
            params = doc.get("parameters") or {}
            if not isinstance(params, dict):
                raise InvalidInput("'parameters' must be a JSON object")
            controls, timeout_s, binary_all = v2.parse_parameters(params)
            requested, binary_names = parse_outputs(doc, binary_all)
            targets = output_targets(doc, shm)
            answers = await v2.infer(self.app, engine, inputs, controls, arrival,
                                     arrival + timeout_s if timeout_s is not None else None)
            tensors = v2.outputs(engine, answers, requested)
            shared = v2.place_in_shared_memory(shm, tensors, targets) if targets else None
            response = encode_response(engine, doc.get("id"), tensors, binary_names, shared)
            if "gzip" in request.headers.get("Accept-Encoding", "") or "deflate" in request.headers.get("Accept-Encoding", ""):
                response.enable_compression()
            return response, answers

        return await self.guarded(request, name, SURFACE, run, error_response)

    async def guarded(self, request: web.Request, name: str, surface: str, run, error) -> web.Response:
        """One inference request on any of this port's surfaces (v2, TorchServe's, KServe v1's): the port's in-flight
        limit before the body is read, then `run(arrival, attempt)` -> (response, answers), every outcome counted and
        logged once; `error(status, message)` is the surface's own error body. A client that closes its connection
        cancels its request (CANCELLED, counted, re-raised); nothing else escapes (500 and a log line)."""
        arrival = time.monotonic()
        if self.active >= self.max_concurrent:  # before reading the body: a flood costs no memory
            e = QueueFull(f"server is at capacity ({self.max_concurrent} HTTP requests in progress); retry with backoff")
            self.outcome(request, name, e.code.name, 1, arrival, str(e), surface=surface)
            return error(429, str(e))
        self.active += 1
        attempt = Attempt()
        try:
            response, answers = await run(arrival, attempt)
        except ServingError as e:
            self.outcome(request, name, e.code.name, attempt.images, arrival, str(e), request_id=attempt.request_id, surface=surface)
            return error(http_status(e), str(e))
        except asyncio.CancelledError:  # the client closed its connection (or the server stops): no one to answer
            self.outcome(request, name, "CANCELLED", attempt.images, arrival, "the client closed the connection",
                         request_id=attempt.request_id, surface=surface)
            raise
        except web.HTTPException as e:  # aiohttp's: a body too large (413) or too slow (408)
            self.outcome(request, name, HTTP_ERROR_CODES.get(e.status, "INVALID_ARGUMENT"), attempt.images, arrival,
                         e.text or e.reason, request_id=attempt.request_id, surface=surface)
            return error(e.status, e.text or e.reason)
        except Exception as e:  # noqa: BLE001 - nothing may crash the process; log it, answer 500
            log.exception("internal error")
            self.outcome(request, name, "INTERNAL", attempt.images, arrival, f"internal error: {type(e).__name__}: {e}",
                         request_id=attempt.request_id, surface=surface)
            return error(500, f"internal error: {type(e).__name__}")
        finally:
            self.active -= 1
        self.outcome(request, name, "OK", attempt.images, arrival, answers=answers, request_id=attempt.request_id, surface=surface)
        return response

    def outcome(self, request: web.Request, model: str, code: str, images: int, arrival: float,
                message: str | None = None, answers=None, request_id: str | None = None, surface: str = SURFACE) -> None:
        """Count one inference request's outcome, and log it if an access log is kept (`surface`: this port's
        TorchServe API, server/torchserve.py, shares it)."""
        count(self.app, model, code, images, surface=surface)
        if self.app.access_log is not None:
            exits = answer_exits(answers) if answers is not None else (None, None)
            explaining = request.path.endswith(":explain") or request.path.startswith("/explanations/")
            method = ("explanations" if surface == "torchserve" else "explain") if explaining else METHODS.get(surface, "infer")
            self.app.access_log.record(surface, method, model, code, images,
                                       arrival, request.remote or "", message, *exits, request_id=request_id)

    async def read_body(self, request: web.Request) -> bytes:
        """An inference request's body (server/torchserve.py's too), within this port's body timeout."""
        return await _read_body(request, self.body_timeout_s)

async def _json_object(request: web.Request, what: str) -> dict:
    """A small request body as a JSON object ({} when empty)."""
    try:
        doc = json.loads(await _read_body(request, BODY_TIMEOUT_S) or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInput(f"{what}: the body is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"{what}: the body must be a JSON object")
    return doc


async def _repository_parameters(request: web.Request, action: str) -> dict:
    """A load or unload body's "parameters" (Triton's: the body may be empty)."""
    doc = await _json_object(request, f"model {action}")
    if set(doc) - {"parameters"}:
        raise InvalidInput(f"model {action}: unknown field(s) {sorted(set(doc) - {'parameters'})[:8]}; only 'parameters'")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput(f"model {action}: 'parameters' must be a JSON object")
    return params


async def _read_body(request: web.Request, timeout_s: float) -> bytes:
    """The body; aiohttp undoes gzip/deflate (tritonclient's request_compression_algorithm) as it reads and
    answers 413 once the decompressed body passes client_max_size. A body slower than `timeout_s` (a
    slowloris client holding request slots) is refused 408."""
    try:
        return await asyncio.wait_for(request.read(), timeout_s)
    except asyncio.TimeoutError as e:
        raise web.HTTPRequestTimeout(text=f"request body not received within {timeout_s:g} s") from e
    except web.HTTPException:
        raise
    except Exception as e:  # noqa: BLE001 - RequestPayloadError and its causes: bad or unknown encoding, cut off
        cause = e.__cause__ or e
        encoding = request.headers.get("Content-Encoding", "")
        what = f"with Content-Encoding {encoding[:32]!r} (gzip, deflate or none)" if encoding else ""
        raise InvalidInput(f"request body cannot be read {what}: {str(cause).strip()[:160]}".replace("  ", " ")) from e
