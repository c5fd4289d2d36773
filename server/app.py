"""Assemble the server: load models from the repository, measure latency, serve gRPC (service, health,
reflection) and Prometheus metrics, and shut down gracefully."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.auxnet.v1 import inference_pb2 as pb
from server import grpc_log, load_memory
from server.access_log import AccessLog
from server.backends import default_threads, make_backend
from server.connection_limits import grpc_options, per_port_cap, raise_open_file_limit
from server.credentials import BearerToken, TlsFiles
from server.decode import ImageLimits
from server.engine import ModelEngine
from server.engine_config import EngineConfig
from server.errors import InsufficientMemory, InvalidInput, UnknownModel
from server.handlers import CorruptMessages, method_handlers
from server.host_metrics import register_process_metrics
from server.log_settings import LogControl
from server.memory import release_freed_memory
from server.metrics import Metrics
from server.metrics_http import start_metrics_server
from server.model_control import ModelControl
from server.otlp_settings import OtlpSettings
from server.precision import precision_warnings
from server.repository import RepositoryError, list_models, load_manifest
from server.requests import count as count_images
from server.service import EarlyExitServicer
from server.shared_memory import SharedMemoryRegistry
from server.static_batches import static_chain
from server.trace_count import SharedTraceCount
from server.tracing import Tracer, TraceSettings
from server.v2 import grpc_service as v2_grpc
from server.worker_sync import WorkerSync

log = logging.getLogger("auxnet.server")
REFUSAL_WINDOW_S = 0.5
CORE_HEADROOM_RPCS = 16
HEALTH_PORT_CONNECTIONS = 256  # probes: kubelet opens one connection per probe
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EarlyExitService"].full_name


@dataclass(frozen=True)
class ServerConfig:
    repo: str
    host: str = "127.0.0.1"  # localhost unless told otherwise
    port: int = 8500  # 0 = pick a free port
    metrics_port: int | None = 8501  # None = no HTTP metrics endpoint; 0 = pick a free port
    cpu_metrics: bool = True  # the host's CPU and memory as Triton's nv_cpu_* on /metrics (server/host_metrics.py)
    gpu_metrics: bool = True  # the host's GPUs as Triton's nv_gpu_* where NVML shows any (server/gpu_metrics.py)
    # ONNX Runtime's CPU arena: each session keeps its largest batch's activations between runs (faster); off, a
    # loaded model keeps 1.6-12x less memory for 0-14% more time a batch (RESULTS §63). Not with --static-batches.
    cpu_mem_arena: bool = True
    # A second gRPC port serving only grpc.health.v1, outside the inference port's concurrency limit, so a
    # flood of requests never fails an orchestrator's probes (issue 12). None = off; 0 = pick a free port.
    health_port: int | None = None
    # The Open Inference Protocol's HTTP/REST side (server/v2/http.py). None = off; 0 = pick a free port.
    http_port: int | None = 8000
    models: tuple[str, ...] = ()  # names to load at start; empty = every model ("*" too); explicit mode: empty = none
    model_control: str = "poll"  # Triton's --model-control-mode: poll, none or explicit (server/model_control.py)
    backend: str = "onnxruntime"
    device: str = "cpu"
    # Pad batches to power-of-two buckets on buffers bound once; on CUDA each bucket's run is a CUDA graph
    # (server/static_batches.py, issue 14).
    static_batches: bool = False
    threads: int = field(default_factory=default_threads)
    decode_threads: int = 1  # for images too large to decode on the event loop
    engine: EngineConfig = EngineConfig()
    limits: ImageLimits = ImageLimits()
    max_message_bytes: int = 16 * 1024 * 1024
    # What the models loaded from a load request's files may take on disk in all (server/model_upload.py); 0: such
    # loads are refused. The default holds ~125 copies of the default model (8.2 MB).
    upload_quota_bytes: int = 1024 * 2**20
    # A load while serving is refused where it would leave less memory than this available (server/load_memory.py);
    # None: not checked.
    load_memory_floor_bytes: int | None = 256 * 2**20
    # The same on the GPU, where the sessions run on one (server/device_memory.py): what a load leaves free there.
    device_memory_floor_bytes: int | None = 1024 * 2**20
    grace_s: float = 10.0
    poll_s: float = 2.0  # how often to look for a new version of each model; 0 = never
    tls_cert: str | None = None  # PEM server certificate chain; with tls_key, serve TLS only
    tls_key: str | None = None
    tls_client_ca: str | None = None  # PEM CA: require client certificates signed by it (mutual TLS)
    auth_token: str | None = None  # require "authorization: Bearer <token>" on the inference service
    auth_token_file: str | None = None  # the same with the token from this file, read again when it changes
    # Close each client connection after this long (gRPC GOAWAY; in-flight calls get grace_s): clients then
    # reconnect and re-resolve, so replicas an autoscaler adds get traffic from clients already connected.
    max_connection_age_s: float = 0.0  # 0 = connections live as long as the client keeps them
    # Per port (gRPC, HTTP): at most this many connections (0: connection_limits' default, within the open-file
    # limit), and one without a request or RPC for idle_timeout_s is closed (0: never). server/connection_limits.py
    max_connections: int = 0
    # gRPC: HTTP/2 streams one connection may hold, a stream its client reset counting until the server lets it go
    # (an HTTP/2 Rapid Reset's bound, RESULTS §55). None: as many as the whole server admits (max_inflight x models +
    # headroom, gRPC core's concurrency limit), so no call the server would take is refused for its connection's sake;
    # 0: gRPC's default, unlimited.
    max_streams_per_connection: int | None = None
    idle_timeout_s: float = 60.0
    access_log: str | None = None  # a file (or "-" for stderr): one JSON line per request (server/access_log.py)
    access_log_sample: float = 1.0  # the fraction of successful requests written there; errors always are
    reuse_port: bool = False  # share the ports with sibling worker processes (server/workers.py)
    trace: TraceSettings = TraceSettings()  # request traces (server/tracing.py, Triton's trace extension)
    otlp: OtlpSettings | None = None  # where spans go with trace.mode opentelemetry (server/otlp_export.py)
    allow_client_shm: bool = False  # Triton's system shared memory extension (server/shared_memory.py); same host only
    worker_state: str | None = None  # a --workers supervisor's folder of shared settings (server/worker_sync.py)
    log_level: str = "INFO"  # the start of the log settings Triton's logging extension changes (server/log_settings.py)


class ServerApp:
    def __init__(self, cfg: ServerConfig):
        self.cfg = cfg
        self.metrics = Metrics()
        self.limits = cfg.limits
        self.executor = ThreadPoolExecutor(max_workers=cfg.threads, thread_name_prefix="segment")
        # Large images decode here, apart from the segment threads (issue 12): they queue among themselves.
        self.decode_executor = ThreadPoolExecutor(max_workers=cfg.decode_threads, thread_name_prefix="decode",
                                                  initializer=_lower_thread_priority)
        self.engines: dict[str, ModelEngine] = {}
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.health_server: grpc.aio.Server | None = None
        self.port = 0
        self.health_port: int | None = None
        self.metrics_port: int | None = None
        self._http = None
        self.v2_http = None  # server/v2/http.py's OpenInferenceHTTP while the HTTP side serves
        self.http_port: int | None = None
        self.draining = False
        self._grpc_log = None  # server/grpc_log.py's filter while serving
        self._watch: asyncio.Task | None = None
        self._watch_creds: asyncio.Task | None = None
        self._watch_sync: asyncio.Task | None = None
        self.tls: TlsFiles | None = None  # set by start(); both read again on change (server/credentials.py)
        self.token: BearerToken | None = None
        self.access_log: AccessLog | None = None
        # Under a supervisor the workers share models (explicit mode), log and trace settings and shm regions; a
        # process started with --reuse-port alone has no siblings to tell, so those stay fixed there.
        self.sync = WorkerSync(self, cfg.worker_state) if cfg.worker_state else None
        shared = not cfg.reuse_port or self.sync is not None
        self.tracer = Tracer(cfg.trace, runtime_updates=shared, own_file=self.sync is not None, otlp=cfg.otlp,
                             count_spans=lambda outcome, n: self.metrics.otlp_spans.labels(outcome).inc(n),
                             shared_count=SharedTraceCount(cfg.worker_state) if self.sync is not None else None)
        self._refused: dict[str, Path] = {}  # model -> version path already refused (logged once)
        self._short_of_memory: dict[str, Path] = {}  # model -> version path refused for memory (logged once, retried)
        self._retiring: set[asyncio.Task] = set()
        self.control = ModelControl(self, cfg.model_control)
        # Log settings change at run time only where one process serves, as trace settings.
        self.log_control = LogControl(cfg.log_level, runtime_updates=shared)
        self.shared_memory = SharedMemoryRegistry(
            cfg.allow_client_shm, runtime_updates=shared,
            on_change=lambda regions, size: (self.metrics.shm_regions.set(regions), self.metrics.shm_bytes.set(size)))

    # --- models ---------------------------------------------------------------------------------------

    def load_models(self) -> None:
        """Validate and load every model (blocking; before serving). Raises RepositoryError."""
        dirs = list_models(self.cfg.repo)
        explicit = self.cfg.model_control == "explicit"
        if self.cfg.models and "*" not in self.cfg.models:
            names = {d.name: d for d in dirs}
            missing = [m for m in self.cfg.models if m not in names]
            if missing:
                raise RepositoryError(f"models {missing} not found in {self.cfg.repo}; it holds {sorted(names)}")
            dirs = [names[m] for m in self.cfg.models]
        elif explicit and not self.cfg.models:
            dirs = []  # as Triton's explicit mode: only the models named at start, then what the API loads
        if explicit and self.sync is not None and self.sync.read()["models"] is not None:
            dirs = []  # a restarted or recycled worker: start() loads what the other workers serve
        if not dirs and not explicit:
            raise RepositoryError(f"model repository {self.cfg.repo} holds no model (no */manifest.json)")
        for d in dirs:
            self.engines[d.name] = self._load_engine(d)
        self._warn_if_no_room_to_reload()

    def _warn_if_no_room_to_reload(self) -> None:
        """Start-up loads are not refused for memory (a server that cannot hold its models fails to start, as it
        always did), but where what they leave is already under what a reload of the largest of them needs, every
        new version, upload and API load would be refused: say so now, not at the first refusal."""
        floor = self.cfg.load_memory_floor_bytes
        room = load_memory.available() if floor is not None and self.engines else None
        largest = max((e.memory_estimate or 0 for e in self.engines.values()), default=0)
        if room is not None and room.bytes - largest < floor:
            log.warning("after start-up %.0f MB is available (%s): a new version of the largest model loaded (~%.0f "
                        "MB estimated) would leave less than --load-memory-floor-mb %.0f MB, so reloads and loads "
                        "while serving will be refused until there is more memory", room.bytes / 2**20, room.source,
                        largest / 2**20, floor / 2**20)

    def _load_engine(self, model_dir: Path, name: str | None = None) -> ModelEngine:
        """Validate, open the backends, measure latency (blocking). Raises RepositoryError and others. `name`:
        the model's name where `model_dir` is a version folder (REPO/.versions/...), not the model's REPO/NAME."""
        info = load_manifest(model_dir)
        name = name or model_dir.name
        if info.name != name:
            log.warning("model folder %s declares name %r; serving it as %r", model_dir.name, info.name, name)
            info = type(info)(**{**info.__dict__, "name": name})
        if self.cfg.static_batches:
            if self.cfg.backend != "onnxruntime":
                raise ValueError(f"static batches run on the onnxruntime backend, not {self.cfg.backend}")
            backends = static_chain([e.onnx for e in info.exits], self.cfg.device, self.cfg.engine.max_batch)
        else:
            backends = [make_backend(self.cfg.backend, e.onnx, e.plan, self.cfg.device, 1, self.cfg.cpu_mem_arena)
                        for e in info.exits]
        for warning in precision_warnings(info, getattr(backends[0], "device_type", "cpu")):
            log.warning(warning)
        engine = ModelEngine(info, backends, self.cfg.engine, self.metrics, self.executor, self.cfg.threads)
        engine.tracer = self.tracer if self.tracer.can_trace else None  # without a file or collector it is never on
        gpu = getattr(backends[0], "device_type", "cpu") != "cpu"
        engine.memory_estimate = load_memory.needed(model_dir, self.cfg.engine.max_batch, self.cfg.static_batches,
                                                    self.cfg.cpu_mem_arena, gpu)
        on_device = ""
        if gpu:
            engine.device_memory_estimate = load_memory.device_needed(model_dir, self.cfg.engine.max_batch,
                                                                      self.cfg.static_batches)
            on_device = f", GPU memory ~{engine.device_memory_estimate / 2**20:.0f} MB"
        engine.calibrate_latency()
        log.info("loaded %s (%s, %d exits, %s, %s, memory ~%.0f MB estimated%s); batch-1 latency per exit: %s",
                 info.name, info.version, len(info.exits), backends[0].name, info.precision,
                 engine.memory_estimate / 2**20, on_device,
                 ", ".join(f"{1000 * engine.latency.predict(k, 1):.2f} ms" for k in range(len(info.exits))))
        return engine

    def load_engine_while_serving(self, model_dir: Path, name: str | None = None, copies: int = 1) -> ModelEngine:
        """_load_engine for a load while serving (the API's, an upload's, a poll's): refused first, naming the
        figures, where `copies` of it (one per --workers process about to load it) would leave the server less
        memory than --load-memory-floor-mb (server/load_memory.py)."""
        load_memory.check(name or model_dir.name, model_dir.resolve(), self.cfg.load_memory_floor_bytes, copies,
                          self.cfg.engine.max_batch, self.cfg.static_batches, self.cfg.cpu_mem_arena, self._serves_on_gpu(),
                          self.cfg.device_memory_floor_bytes)
        return self._load_engine(model_dir, name)

    def _serves_on_gpu(self) -> bool:
        """Whether a new load's sessions will run on a GPU: as the options say, or (--device auto, which picks
        per session) as the models loaded already do."""
        return load_memory.on_gpu(self.cfg.device, self.cfg.backend) or any(
            getattr(e.backends[0], "device_type", "cpu") != "cpu" for e in self.engines.values())

    async def _watch_repository(self) -> None:
        """Reload without loss: when `REPO/NAME` points to a new version, load and warm it beside the old
        one, switch atomically, and retire the old one once its admitted requests are answered. A broken
        new version is refused with one log line and the old one keeps serving. Unless --model chose the
        models, the repository's membership is watched too, as Triton's POLL mode: a model added is loaded, a
        model gone for two polls in a row is unloaded (server/model_control.py)."""
        loop = asyncio.get_running_loop()
        watch_membership = self._watches_membership()
        while True:
            await asyncio.sleep(self.cfg.poll_s)
            for name, old in list(self.engines.items()):
                try:
                    current = (Path(self.cfg.repo) / name).resolve(strict=True)
                except OSError:
                    continue  # mid-switch or removed: keep serving what we have (a removal is judged below)
                if current == old.info.path or self._refused.get(name) == current:
                    continue
                try:
                    new = await loop.run_in_executor(None, self.load_engine_while_serving, Path(self.cfg.repo) / name)
                except InsufficientMemory as e:  # may pass later (another model unloaded): tried at every poll, logged once
                    if self._short_of_memory.get(name) != current:
                        self._short_of_memory[name] = current
                        self.metrics.reloads.labels(name, "refused").inc()
                        log.error("refusing new version %s of model %s for now: %s; still serving %s; tried again at "
                                  "every poll", current.name, name, e, old.info.version)
                    continue
                except Exception as e:  # noqa: BLE001 - any failure means: keep the old version
                    self._refused[name] = current
                    self.metrics.reloads.labels(name, "refused").inc()
                    log.error("refusing new version %s of model %s: %s; still serving %s", current.name, name, e,
                              old.info.version)
                    continue
                if self.engines.get(name) is old:  # not unloaded meanwhile
                    self.switch_to(name, new)
                    self.metrics.reloads.labels(name, "ok").inc()
            if watch_membership and not self.draining:
                await self.control.poll_membership(self._refused)

    def switch_to(self, name: str, new: ModelEngine) -> None:
        """Start `new` and serve `name` from it (the atomic switch: new lookups get it); the version it replaces,
        if any, retires once its admitted requests are answered (requests that looked it up just before are
        handed on)."""
        new.start()
        old = self.engines.get(name)
        self.engines[name] = new
        if old is None:
            log.info("model %s loaded: %s", name, new.info.version)
            return
        log.info("model %s switched from %s to %s", name, old.info.version, new.info.version)
        task = asyncio.create_task(self._retire(old, new))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, old: ModelEngine, new: ModelEngine) -> None:
        """The replaced version answers what it admitted, stops, and its memory goes back to the system
        (server/memory.py: without it, resident memory climbs with every reload)."""
        await old.retire(new, settle_s=1.0, timeout_s=self.cfg.grace_s)
        del old
        await asyncio.sleep(0)  # the callbacks its stopped workers left on the loop hold it: let them run first
        await asyncio.get_running_loop().run_in_executor(None, release_freed_memory)

    # --- settings every worker shares (server/worker_sync.py; one process: just this one) -----------------

    async def update_log_settings(self, changes: dict) -> dict:
        settings = self.log_control.update(changes)
        if self.sync is not None and changes:
            await self.sync.publish(lambda state: state.update(log=settings), "log", "the log settings' change")
        return settings

    async def update_trace_settings(self, model: str, changes: dict) -> dict:
        settings = self.tracer.update(model, changes)
        if self.sync is not None:
            await self.sync.publish(lambda state: state.update(trace=self.tracer.shared()), "trace",
                                    "the trace settings' change")
        return settings

    async def register_region(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if self.sync is None:
            self.shared_memory.register(name, key, offset, byte_size)
            return
        registered = []

        async def here() -> None:  # first: a bad key is refused by name before anything is shared
            self.shared_memory.register(name, key, offset, byte_size)
            registered.append(name)

        spec = {"key": key, "offset": offset, "byte_size": byte_size}
        try:
            await self.sync.publish(_region_edit(name, spec), f"shm:{name}", f"registering region {name!r}", first=here)
        except InvalidInput:
            if registered:  # registered here, then found registered through another worker
                self.shared_memory.unregister(name)
            raise

    async def unregister_region(self, name: str) -> None:
        self.shared_memory.unregister(name)
        if self.sync is not None:
            await self.sync.publish(_region_edit(name, None), f"shm:{name}", f"unregistering region {name!r}")

    def default_model_name(self) -> str:
        return next(iter(self.engines)) if len(self.engines) == 1 else ""

    def ready(self) -> bool:
        """Every loaded model is accepting requests (false before start and while draining). In explicit model
        control a server with no model loaded is ready, as Triton's: loading is the API's to ask."""
        explicit = self.cfg.model_control == "explicit"
        return not self.draining and (bool(self.engines) or explicit) and all(e.accepting and not e.stopped for e in self.engines.values())

    def engine_for(self, name: str) -> ModelEngine:
        if not name:
            if len(self.engines) == 1:
                return next(iter(self.engines.values()))
            raise UnknownModel(f"several models are loaded ({sorted(self.engines)}); name one in 'model'")
        if name not in self.engines:
            shown = name if len(name) <= 64 else name[:64] + "..."
            raise UnknownModel(f"model {shown!r} is not loaded; loaded: {sorted(self.engines)}")
        return self.engines[name]

    # --- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> int:
        http_surface = self._http_surface()  # before binding anything: a missing aiohttp refuses to start cleanly
        if self.sync is not None:  # a worker serves what its siblings serve before it takes a connection
            self.sync.join()
            await self.sync.converge()
        cfg = self.cfg
        asked_tls = any(f is not None for f in (cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca))  # '' too: refused by name
        self.tls = TlsFiles(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca) if asked_tls else None
        self._tls_in_use()
        if cfg.auth_token is not None or cfg.auth_token_file is not None:
            self.token = BearerToken(cfg.auth_token, cfg.auth_token_file)
        if cfg.access_log is not None:
            self.access_log = AccessLog(cfg.access_log, cfg.access_log_sample)
        self._grpc_log = grpc_log.install(lambda method: self.metrics.grpc_failed_batches.labels(method[:128]).inc())
        open_files = raise_open_file_limit()
        ports = 1 + (http_surface is not None)
        self.connection_cap = per_port_cap(cfg.max_connections, open_files, ports)
        log.info("at most %d connections per port (open-file limit %d); %s", self.connection_cap, open_files,
                 f"idle ones closed after {cfg.idle_timeout_s:g} s" if cfg.idle_timeout_s > 0 else "idle ones kept")
        # Shedding in gRPC core, before any Python runs: under a flood the handler itself is the cost, so
        # RPCs beyond what the engines admit (plus room for probes) are refused RESOURCE_EXHAUSTED there.
        core_limit = self.cfg.engine.max_inflight * max(1, self._most_models()) + CORE_HEADROOM_RPCS
        # Streams per connection: by default as many as the whole server admits, no more (RESULTS §55)
        streams = core_limit if cfg.max_streams_per_connection is None else cfg.max_streams_per_connection
        opts = [("grpc.max_receive_message_length", self.cfg.max_message_bytes),
                ("grpc.max_send_message_length", self.cfg.max_message_bytes),
                ("grpc.so_reuseport", int(self.cfg.reuse_port)),
                *grpc_options(self.connection_cap, cfg.idle_timeout_s, streams)]
        if self.cfg.max_connection_age_s > 0:  # gRPC core adds +-10% jitter, so clients do not reconnect at once
            opts += [("grpc.max_connection_age_ms", int(1000 * self.cfg.max_connection_age_s)),
                     ("grpc.max_connection_age_grace_ms", int(1000 * self.cfg.grace_s))]
        interceptors = [BearerTokenInterceptor(self.token, self)] if self.token is not None else []
        self.server = grpc.aio.server(options=opts, interceptors=interceptors, maximum_concurrent_rpcs=core_limit)
        corrupt = CorruptMessages(lambda method: count_images(
            self, "", "INVALID_ARGUMENT", 1, "auxnet.v1" if method.startswith(f"/{SERVICE_NAME}/") else "v2-grpc"))
        trace_context = self.tracer.exporter is not None  # W3C traceparent read from metadata (server/otel_context.py)
        v1 = method_handlers(EarlyExitServicer(self), pb.DESCRIPTOR.services_by_name["EarlyExitService"],
                             lambda descriptor: getattr(pb, descriptor.name), corrupt, trace_context=trace_context)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, v1),))
        self.server.add_registered_method_handlers(SERVICE_NAME, v1)
        v2_grpc.add_to_server(v2_grpc.OpenInferenceServicer(self), self.server, corrupt, trace_context)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, v2_grpc.OWN_SERVICE_NAME, v2_grpc.TRITON_CONFIG_SERVICE,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), self.server)
        address = f"{self.cfg.host}:{self.cfg.port}"
        if self.tls is not None:
            self.port = self.server.add_secure_port(address, self.tls.grpc_credentials())
        else:
            self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.cfg.host}:{self.cfg.port} (in use?)")
        if self.cfg.health_port is not None:
            # No concurrency limit here: that is the point of this port.
            self.health_server = grpc.aio.server(options=[("grpc.so_reuseport", int(self.cfg.reuse_port)),
                                                          *grpc_options(HEALTH_PORT_CONNECTIONS, cfg.idle_timeout_s)])
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            address = f"{self.cfg.host}:{self.cfg.health_port}"
            self.health_port = (self.health_server.add_secure_port(address, self.tls.grpc_credentials()) if self.tls
                                else self.health_server.add_insecure_port(address))
            if self.health_port == 0:
                raise OSError(f"cannot listen on {address} for health checks (in use?)")
            await self.health_server.start()
        for engine in self.engines.values():
            engine.start()
        if self.cfg.metrics_port is not None:
            register_process_metrics(self.metrics.registry, cpu=self.cfg.cpu_metrics, gpu=self.cfg.gpu_metrics)
            self._http = start_metrics_server(self.cfg.metrics_port, self.cfg.host, self.metrics.registry)
            self.metrics_port = self._http.server_port
        if http_surface is not None:
            self.v2_http = http_surface(self, max_concurrent=core_limit)
            self.http_port = await self.v2_http.start(self.cfg.host, self.cfg.http_port, self.cfg.reuse_port)
        await self.server.start()
        for name in ("", SERVICE_NAME, *v2_grpc.SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.cfg.poll_s > 0:
            if self.cfg.model_control == "poll":
                self._watch = asyncio.create_task(self._watch_repository())
            if self.tls is not None or (self.token is not None and self.token.path):
                self._watch_creds = asyncio.create_task(self._watch_credentials())
        if self.sync is not None:
            self._watch_sync = asyncio.create_task(self.sync.watch())
        self.log_control.install()  # last: a start that fails leaves the process's logging as it was
        log.info("serving %s on %s:%d (gRPC: auxnet.v1 and %s), HTTP %s, metrics %s", sorted(self.engines),
                 self.cfg.host, self.port, v2_grpc.SPEC_SERVICE_NAME,
                 f"http://{self.cfg.host}:{self.http_port}/v2" if self.http_port else "off",
                 f"http://{self.cfg.host}:{self.metrics_port}/metrics" if self.metrics_port else "off")
        return self.port

    def _most_models(self) -> int:
        """How many models may serve at once: the loaded ones, or, where models may be loaded later (explicit mode,
        and poll mode watching the repository's membership), every one the repository holds at start. Models added
        beyond that share gRPC core's limit: their requests may be refused there before their engine is full."""
        if self.cfg.model_control == "none" or (self.cfg.model_control == "poll" and not self._watches_membership()):
            return len(self.engines)
        return max(len(self.engines), len(list_models(self.cfg.repo)))

    def _watches_membership(self) -> bool:
        """Poll mode without --model: models added to the repository are loaded, those gone unloaded."""
        return self.cfg.model_control == "poll" and self.cfg.poll_s > 0 and (not self.cfg.models or "*" in self.cfg.models)

    async def shutdown(self, grace_s: float | None = None, handoff: bool = False) -> bool:
        """NOT_SERVING first, then refuse new requests, answer every admitted one, then stop.

        `handoff`: a replacement already serves on the same ports (a recycled --workers process). Refusing with
        UNAVAILABLE ("retry on another replica") would then lose requests that have nowhere else to go, so the
        ports close first instead: gRPC sends GOAWAY and refuses new calls on open connections in the way clients
        retry by themselves on a new connection, which reaches the replacement; HTTP and the health port stop
        accepting. Calls already here are answered within the grace period, except those grpc had received but
        not yet handed to a handler: grpc cancels them (grpc/grpc#41785), and server.client.Client retries those."""
        grace = self.cfg.grace_s if grace_s is None else grace_s
        if handoff:  # the health port too: a probe must not see this process's NOT_SERVING while the other serves
            await asyncio.gather(*([self.server.stop(grace)] if self.server is not None else []),
                                 *([self.v2_http.stop()] if self.v2_http is not None else []),
                                 *([self.health_server.stop(0.5)] if self.health_server is not None else []))
            self.server = self.v2_http = self.health_server = None
        self.draining = True
        if self.sync is not None:
            self.sync.leave()  # no shared change waits for a worker that takes no new requests
        await self.health.enter_graceful_shutdown()
        for task in (self._watch, self._watch_creds, self._watch_sync):
            if task is not None:
                task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        drained = all(await asyncio.gather(*(e.drain(grace) for e in self.engines.values())))
        # Requests refused while draining are still being answered UNAVAILABLE; stopping the port under
        # them would turn that into CANCELLED, which clients do not retry elsewhere.
        if not handoff:
            await asyncio.sleep(min(REFUSAL_WINDOW_S, grace))
        if self.server is not None:
            await self.server.stop(grace=1.0)
        if self.v2_http is not None:
            await self.v2_http.stop()
        if self.health_server is not None:
            await self.health_server.stop(grace=0.5)
        for e in self.engines.values():
            await e.stop()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.decode_executor.shutdown(wait=False, cancel_futures=True)
        if self.access_log is not None:
            self.access_log.close()
        self.tracer.close()
        self.log_control.close()
        self.shared_memory.close()
        self.control.close()  # files of models loaded from requests (their sessions are closed above)
        if self._grpc_log is not None:
            grpc_log.uninstall(self._grpc_log)
        log.info("stopped (%s)", "all requests answered" if drained else "grace period ran out")
        return drained

    def _http_surface(self):
        """The HTTP side's class, imported only when it serves: a gRPC-only deployment needs no aiohttp."""
        if self.cfg.http_port is None:
            return None
        try:
            from server.v2.http import OpenInferenceHTTP
        except ImportError as e:
            raise RuntimeError(f"the HTTP side (--http-port) needs aiohttp ({e}); install it, or turn the HTTP side "
                               "off with --http-port -1") from e
        return OpenInferenceHTTP

    async def _watch_credentials(self) -> None:
        """Every --poll-s: TLS files and the token file read again if they changed (server/credentials.py)."""
        while True:
            await asyncio.sleep(self.cfg.poll_s)
            if self.tls is not None and self.tls.refresh():
                self._tls_in_use()
            if self.token is not None:
                self.token.refresh()

    def _tls_in_use(self) -> None:
        """The certificate now in use: its expiry as a metric, and a warning when it is near or past."""
        material = self.tls.material if self.tls is not None else None
        if material is None or material.not_after is None:
            return
        self.metrics.tls_expiry.set(material.not_after)
        warning = material.expiry_warning()
        if warning:
            log.warning(warning)

    async def wait(self) -> None:
        if self.server is not None:
            await self.server.wait_for_termination()


def _region_edit(name: str, spec: dict | None):
    """The shared state's edit for a registration (`spec`) or an unregistration (None; every region when `name`
    is empty, as Triton)."""
    def edit(state: dict) -> None:
        regions = state["shm"]
        if spec is None and not name:
            regions.clear()
        elif spec is None:
            regions.pop(name, None)
        elif name in regions:  # registered through another worker (this one had not converged to it yet)
            raise InvalidInput(f"shared memory region {name!r} is registered already; unregister it first")
        else:
            regions[name] = spec
    return edit


def _lower_thread_priority() -> None:
    """Decode threads run at the lowest CPU priority (Linux applies nice per thread): a 4096x4096 image then
    takes the CPU that segments leave idle, instead of slowing every small request."""
    import os
    import threading

    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux, or not permitted: normal priority
        pass


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Require `authorization: Bearer <token>` on both inference services. Health, reflection and the Open
    Inference Protocol's liveness/readiness RPCs stay open, as orchestrators' probes carry no credentials.
    The token is compared in constant time. A refusal is written to the access log, if one is kept."""

    def __init__(self, token: BearerToken, app=None):
        self.token = token  # current even after a rotation of its file
        self.app = app

    async def intercept_service(self, continuation, details):
        method = details.method
        v2 = any(method.startswith(f"/{name}/") for name in v2_grpc.PROTECTED)
        if method.startswith(f"/{SERVICE_NAME}/") or (v2 and method not in v2_grpc.PROBE_METHODS):
            got = dict(details.invocation_metadata or ()).get("authorization", "")
            if not self.token.matches(got):
                if method.rsplit("/", 1)[-1] in v2_grpc.STREAM_METHODS:  # answered before any request is read
                    return grpc.stream_stream_rpc_method_handler(self._deny(method))
                return grpc.unary_unary_rpc_method_handler(self._deny(method))
        return await continuation(details)

    def _deny(self, method: str):
        started = time.monotonic()

        async def deny(request, context):
            access_log = getattr(self.app, "access_log", None)
            if access_log is not None:
                access_log.record("v2-grpc" if not method.startswith(f"/{SERVICE_NAME}/") else "auxnet.v1",
                                  method.rsplit("/", 1)[-1], "", "UNAUTHENTICATED", 0, started, context.peer(), DENIED)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)

        return deny


DENIED = "missing or wrong bearer token in the 'authorization' metadata"
