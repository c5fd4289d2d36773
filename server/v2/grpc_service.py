"""`inference.GRPCInferenceService` (Open Inference Protocol, gRPC) on the same port as auxnet.v1.

Answers in raw form (raw_output_contents), as Triton does; accepts inputs in raw or typed form. Errors are
the same status codes and messages as auxnet.v1 (server/service.guard). Why the stubs' package is
`auxnet.oip` while the service answers the specification's `inference.` path: protos/oip/open_inference.proto."""

from __future__ import annotations

import time

import grpc
from google.protobuf import json_format

from protos.oip import open_inference_pb2 as oip
from protos.oip import open_inference_pb2_grpc as oip_grpc
from protos.oip import triton_compat_pb2 as triton
from server import __version__
from server.errors import InvalidInput
from server.handlers import RECEIVED_BYTES, CorruptMessages, method_handlers
from server.requests import parse_where_cheap
from server.service import guard
from server.v2 import model as v2
from server.v2 import stream
from server.v2.grpc_messages import infer_response, output_targets, parameter_value, request_inputs, request_parameters, requested_outputs
from server.v2.tensors import Tensor

SPEC_SERVICE_NAME = "inference.GRPCInferenceService"  # the path every Open Inference Protocol client calls
OWN_SERVICE_NAME = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name  # what reflection describes
SERVICE_NAMES = (SPEC_SERVICE_NAME, OWN_SERVICE_NAME)
TRITON_CONFIG_SERVICE = triton.DESCRIPTOR.services_by_name["TritonModelConfig"].full_name
PROTECTED = (*SERVICE_NAMES, TRITON_CONFIG_SERVICE)  # the bearer token applies to all of these but the probes
STREAM_METHODS = ("ModelStreamInfer",)
PROBE_METHODS = tuple(f"/{s}/{m}" for s in SERVICE_NAMES for m in ("ServerLive", "ServerReady", "ModelReady"))  # no token


def add_to_server(servicer: OpenInferenceServicer, server, corrupt: CorruptMessages, trace_context: bool = False) -> None:
    """Register the servicer by name (the generated helpers know only our package's names): the protocol's
    RPCs and Triton's ModelConfig, ModelStatistics, ModelStreamInfer, TraceSetting, repository, LogSettings and
    system shared memory RPCs under the specification's service, and
    each under the name reflection describes. Requests are parsed by server/handlers.py."""
    def protocol(name):
        return method_handlers(servicer, oip.DESCRIPTOR.services_by_name["GRPCInferenceService"], _message, corrupt, name,
                               trace_context)

    def config(name):
        return method_handlers(servicer, triton.DESCRIPTOR.services_by_name["TritonModelConfig"], _message, corrupt, name)

    for name, table in ((SPEC_SERVICE_NAME, {**protocol(SPEC_SERVICE_NAME), **config(SPEC_SERVICE_NAME)}),
                        (OWN_SERVICE_NAME, protocol(OWN_SERVICE_NAME)), (TRITON_CONFIG_SERVICE, config(TRITON_CONFIG_SERVICE))):
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, table),))
        server.add_registered_method_handlers(name, table)


def _setting_value(cls, v):
    """A log setting's value in Triton's oneof: bool, uint32 or string."""
    if isinstance(v, bool):
        return cls(bool_param=v)
    return cls(uint32_param=v) if isinstance(v, int) else cls(string_param=v)


def _message(descriptor):
    """The generated class of a message type, whichever of our two proto modules defines it."""
    module = oip if descriptor.file.name == oip.DESCRIPTOR.name else triton
    return getattr(module, descriptor.name)


class OpenInferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    def __init__(self, app):
        self.app = app

    async def ServerLive(self, request, context):
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return oip.ServerReadyResponse(ready=self.app.ready())

    async def ModelReady(self, request, context):
        engine = self.app.engines.get(request.name)
        ready = (engine is not None and engine.accepting and not engine.stopped
                 and request.version in ("", engine.info.version))
        return oip.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request, context):
        return oip.ServerMetadataResponse(name=v2.SERVER_NAME, version=__version__, extensions=v2.extensions(self.app))

    async def ModelMetadata(self, request, context):
        async def run():
            m = v2.metadata(v2.resolve(self.app, request.name, request.version))
            tensors = lambda specs: [oip.ModelMetadataResponse.TensorMetadata(**s) for s in specs]
            return oip.ModelMetadataResponse(name=m["name"], versions=m["versions"], platform=m["platform"],
                                             inputs=tensors(m["inputs"]), outputs=tensors(m["outputs"]))

        return await guard(self.app, context, request.name, run(), counted=False)

    async def ModelConfig(self, request, context):
        """Triton's, not the protocol's: protos/oip/triton_compat.proto."""
        async def run():
            config = v2.triton_config(v2.resolve(self.app, request.name, request.version))
            return triton.ModelConfigResponse(config=json_format.ParseDict(config, triton.ModelConfig()))

        return await guard(self.app, context, request.name, run(), counted=False)

    async def ModelStatistics(self, request, context):
        """Triton's statistics extension, not the protocol's: server/statistics.py says what each figure counts."""
        async def run():
            stats = v2.statistics(self.app, request.name, request.version)
            return json_format.ParseDict(stats, triton.ModelStatisticsResponse())

        return await guard(self.app, context, request.name, run(), counted=False)

    async def TraceSetting(self, request, context):
        """Triton's trace extension, not the protocol's: server/tracing.py. No settings: read them."""
        async def run():
            name = request.model_name
            if name:
                v2.resolve(self.app, name, "")
            tracer = self.app.tracer
            if request.settings:
                now = await self.app.update_trace_settings(name, {k: list(v.value) or None for k, v in request.settings.items()})
            else:
                now = tracer.settings(name)
            value = triton.TraceSettingResponse.SettingValue
            return triton.TraceSettingResponse(settings={k: value(value=v if isinstance(v, list) else [v]) for k, v in now.items()})

        return await guard(self.app, context, request.model_name, run(), counted=False)

    async def RepositoryIndex(self, request, context):
        """Triton's model repository extension, not the protocol's: server/model_control.py."""
        async def run():
            index = self.app.control.index(request.repository_name, request.ready)
            return triton.RepositoryIndexResponse(models=[triton.RepositoryIndexResponse.ModelIndex(**m) for m in index])

        return await guard(self.app, context, "", run(), counted=False)

    async def RepositoryModelLoad(self, request, context):
        async def run():
            await self.app.control.load(request.model_name, request.repository_name, request_parameters(request))
            return triton.RepositoryModelLoadResponse()

        return await guard(self.app, context, request.model_name, run(), counted=False)

    async def RepositoryModelUnload(self, request, context):
        async def run():
            await self.app.control.unload(request.model_name, request.repository_name, request_parameters(request))
            return triton.RepositoryModelUnloadResponse()

        return await guard(self.app, context, request.model_name, run(), counted=False)

    async def SystemSharedMemoryStatus(self, request, context):
        """Triton's system shared memory extension, not the protocol's: server/shared_memory.py."""
        async def run():
            status = triton.SystemSharedMemoryStatusResponse.RegionStatus
            return triton.SystemSharedMemoryStatusResponse(
                regions={r["name"]: status(**r) for r in self.app.shared_memory.status(request.name)})

        return await guard(self.app, context, "", run(), counted=False)

    async def SystemSharedMemoryRegister(self, request, context):
        async def run():
            await self.app.register_region(request.name, request.key, request.offset, request.byte_size)
            return triton.SystemSharedMemoryRegisterResponse()

        return await guard(self.app, context, "", run(), counted=False)

    async def SystemSharedMemoryUnregister(self, request, context):
        async def run():
            await self.app.unregister_region(request.name)
            return triton.SystemSharedMemoryUnregisterResponse()

        return await guard(self.app, context, "", run(), counted=False)

    async def LogSettings(self, request, context):
        """Triton's logging extension, not the protocol's: server/log_settings.py. No settings: read them."""
        async def run():
            control = self.app.log_control
            changes = {k: parameter_value(v) for k, v in request.settings.items()}
            empty = sorted(k for k, v in changes.items() if v is None)[:4]
            if empty:
                raise InvalidInput(f"log settings {empty} carry no value")
            now = await self.app.update_log_settings(changes) if changes else control.settings()
            value = triton.LogSettingsResponse.SettingValue
            return triton.LogSettingsResponse(settings={k: _setting_value(value, v) for k, v in now.items()})

        return await guard(self.app, context, "", run(), counted=False)

    async def ModelInfer(self, request, context):
        arrival = time.monotonic()
        remaining = context.time_remaining()
        deadline = arrival + remaining if remaining is not None else None
        parsed: list[Tensor] = []
        answered: list = []  # the engine's answers, for the access log

        async def run():
            engine = v2.resolve(self.app, request.model_name, request.model_version)
            params = request_parameters(request)
            controls, timeout_s, _ = v2.parse_parameters(params)
            end = v2.earliest(deadline, None if timeout_s is None else arrival + timeout_s)
            shm = self.app.shared_memory
            inputs = await parse_where_cheap(self.app, RECEIVED_BYTES.get(), lambda: request_inputs(request, shm))
            parsed.extend(inputs)
            requested = requested_outputs(request)
            targets = output_targets(request, shm)
            answers = await v2.infer(self.app, engine, inputs, controls, arrival, end)
            answered.extend(answers)
            tensors = v2.outputs(engine, answers, requested)
            shared = v2.place_in_shared_memory(shm, tensors, targets) if targets else None
            return infer_response(engine, request.id, tensors, shared=shared)

        return await guard(self.app, context, request.model_name, run(), images=lambda: v2.image_count(parsed),
                           method="ModelInfer", surface="v2-grpc", answers=lambda: answered, request_id=request.id)

    async def ModelStreamInfer(self, request_iterator, context):
        """Triton's bidirectional stream, not the protocol's: server/v2/stream.py."""
        async for response in stream.model_stream_infer(self.app, request_iterator, context):
            yield response
