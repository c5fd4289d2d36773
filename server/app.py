"""Assemble the server: load models from the repository, measure latency, serve gRPC (service, health,
reflection) and Prometheus metrics, and shut down gracefully."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.auxnet.v1 import inference_pb2 as pb
from protos.auxnet.v1 import inference_pb2_grpc as pb_grpc
from server.backends import default_threads, make_backend
from server.decode import ImageLimits
from server.engine import EngineConfig, ModelEngine
from server.errors import UnknownModel
from server.metrics import Metrics
from server.repository import RepositoryError, list_models, load_manifest
from server.service import EarlyExitServicer

log = logging.getLogger("auxnet.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EarlyExitService"].full_name


@dataclass(frozen=True)
class ServerConfig:
    repo: str
    host: str = "127.0.0.1"  # localhost unless told otherwise
    port: int = 8500  # 0 = pick a free port
    metrics_port: int | None = 8501  # None = no HTTP metrics endpoint; 0 = pick a free port
    models: tuple[str, ...] = ()  # names to load; empty = every model in the repository
    backend: str = "onnxruntime"
    device: str = "cpu"
    threads: int = field(default_factory=default_threads)
    engine: EngineConfig = EngineConfig()
    limits: ImageLimits = ImageLimits()
    max_message_bytes: int = 16 * 1024 * 1024
    grace_s: float = 10.0


class ServerApp:
    def __init__(self, cfg: ServerConfig):
        self.cfg = cfg
        self.metrics = Metrics()
        self.limits = cfg.limits
        self.executor = ThreadPoolExecutor(max_workers=cfg.threads, thread_name_prefix="segment")
        self.engines: dict[str, ModelEngine] = {}
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.metrics_port: int | None = None
        self._http = None

    # --- models ---------------------------------------------------------------------------------------

    def load_models(self) -> None:
        """Validate and load every model (blocking; before serving). Raises RepositoryError."""
        dirs = list_models(self.cfg.repo)
        if self.cfg.models:
            names = {d.name: d for d in dirs}
            missing = [m for m in self.cfg.models if m not in names]
            if missing:
                raise RepositoryError(f"models {missing} not found in {self.cfg.repo}; it holds {sorted(names)}")
            dirs = [names[m] for m in self.cfg.models]
        if not dirs:
            raise RepositoryError(f"model repository {self.cfg.repo} holds no model (no */manifest.json)")
        for d in dirs:
            info = load_manifest(d)
            if info.name != d.name:
                log.warning("model folder %s declares name %r; serving it as %r", d.name, info.name, d.name)
                info = type(info)(**{**info.__dict__, "name": d.name})
            backends = [make_backend(self.cfg.backend, e.onnx, e.plan, self.cfg.device, 1) for e in info.exits]
            engine = ModelEngine(info, backends, self.cfg.engine, self.metrics, self.executor)
            engine.calibrate_latency()
            log.info("loaded %s (%s, %d exits, %s); batch-1 latency per exit: %s", info.name, info.version,
                     len(info.exits), backends[0].name,
                     ", ".join(f"{1000 * engine.latency.predict(k, 1):.2f} ms" for k in range(len(info.exits))))
            self.engines[d.name] = engine

    def default_model_name(self) -> str:
        return next(iter(self.engines)) if len(self.engines) == 1 else ""

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
        opts = [("grpc.max_receive_message_length", self.cfg.max_message_bytes),
                ("grpc.max_send_message_length", self.cfg.max_message_bytes),
                ("grpc.so_reuseport", 0)]
        self.server = grpc.aio.server(options=opts)
        pb_grpc.add_EarlyExitServiceServicer_to_server(EarlyExitServicer(self), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server)
        self.port = self.server.add_insecure_port(f"{self.cfg.host}:{self.cfg.port}")
        if self.port == 0:
            raise OSError(f"cannot listen on {self.cfg.host}:{self.cfg.port} (in use?)")
        for engine in self.engines.values():
            engine.start()
        if self.cfg.metrics_port is not None:
            from prometheus_client import start_http_server

            self._http, _ = start_http_server(self.cfg.metrics_port, self.cfg.host, registry=self.metrics.registry)
            self.metrics_port = self._http.server_port
        await self.server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s on %s:%d (metrics on %s)", sorted(self.engines), self.cfg.host, self.port,
                 f"http://{self.cfg.host}:{self.metrics_port}/metrics" if self.metrics_port else "none")
        return self.port

    async def shutdown(self, grace_s: float | None = None) -> bool:
        """NOT_SERVING first, then refuse new requests, answer every admitted one, then stop."""
        grace = self.cfg.grace_s if grace_s is None else grace_s
        await self.health.enter_graceful_shutdown()
        drained = all(await asyncio.gather(*(e.drain(grace) for e in self.engines.values())))
        if self.server is not None:
            await self.server.stop(grace=1.0)
        for e in self.engines.values():
            await e.stop()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        log.info("stopped (%s)", "all requests answered" if drained else "grace period ran out")
        return drained

    async def wait(self) -> None:
        if self.server is not None:
            await self.server.wait_for_termination()
