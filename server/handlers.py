"""gRPC method handlers built from a service's descriptor, whose request messages we parse ourselves instead of
handing grpc a deserializer: a message that is not the method's request type is refused INVALID_ARGUMENT, naming
the type expected, and counted. grpc's own deserializer answered such a message UNKNOWN ("Unexpected
DecodeError") and logged a traceback for each one, a log flood under hostile traffic; here the operator gets one
warning a minute and a counter (auxnet_requests_total{code="INVALID_ARGUMENT"}).

With `trace_context` (tracing in OpenTelemetry mode) each call's W3C traceparent is read from its metadata into
server/otel_context.py's INCOMING, in the handler's own task, where the engine samples it."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable

import grpc
from google.protobuf.message import DecodeError

from server.log_limit import LogLimit
from server.otel_context import INCOMING, from_metadata

log = logging.getLogger("auxnet.server")
# The size on the wire of the request message a handler is serving (of the latest one read, on a stream): what
# ByteSize() would say, which protobuf's upb runtime computes by encoding the whole message again.
RECEIVED_BYTES: contextvars.ContextVar[int] = contextvars.ContextVar("received_bytes", default=0)


class CorruptMessages:
    """Counts messages that do not parse and logs them at most once a minute."""

    def __init__(self, count: Callable[[str], None]):
        self.count = count  # called with the method's full name
        self.limit = LogLimit()

    def seen(self, method: str, peer: str) -> None:
        self.count(method)
        if (also := self.limit.due()) is not None:
            log.warning("%s from %s: a message that is not the method's request type, refused INVALID_ARGUMENT%s",
                        method, peer, also)


def not_a_message(name: str) -> str:
    return f"the request is not a {name} message (its protobuf wire format does not parse)"


def method_handlers(servicer, service, message_class: Callable, corrupt: CorruptMessages,
                    served_as: str | None = None, trace_context: bool = False) -> dict:
    """{method name: handler} for every method of `service` (a ServiceDescriptor), each calling the servicer's
    method of that name with parsed requests. `message_class(descriptor)`: the generated class of a message type.
    `served_as`: the service path the handlers are registered under, if not the descriptor's (for the log).
    `trace_context`: read each call's traceparent (see the module's doc)."""
    table = {}
    for m in service.methods:
        parse = message_class(m.input_type).FromString
        serialize = message_class(m.output_type).SerializeToString
        behaviour, method = getattr(servicer, m.name), f"/{served_as or service.full_name}/{m.name}"
        if m.client_streaming:
            table[m.name] = grpc.stream_stream_rpc_method_handler(_stream_stream(behaviour, parse, method, corrupt, trace_context),
                                                                  response_serializer=serialize)
        elif m.server_streaming:
            table[m.name] = grpc.unary_stream_rpc_method_handler(
                _unary_stream(behaviour, parse, m.input_type.name, method, corrupt, trace_context), response_serializer=serialize)
        else:
            table[m.name] = grpc.unary_unary_rpc_method_handler(
                _unary_unary(behaviour, parse, m.input_type.name, method, corrupt, trace_context), response_serializer=serialize)
    return table


async def _parsed(raw: bytes, parse, name: str, method: str, corrupt: CorruptMessages, context, trace_context: bool):
    RECEIVED_BYTES.set(len(raw))  # in the handler's own task: each call has its own context
    if trace_context:
        INCOMING.set(from_metadata(context.invocation_metadata()))
    try:
        return parse(raw)
    except DecodeError:
        corrupt.seen(method, context.peer())
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, not_a_message(name))


def _unary_unary(behaviour, parse, name, method, corrupt, trace_context):
    async def handler(raw: bytes, context):
        return await behaviour(await _parsed(raw, parse, name, method, corrupt, context, trace_context), context)

    return handler


def _unary_stream(behaviour, parse, name, method, corrupt, trace_context):
    async def handler(raw: bytes, context):
        async for response in behaviour(await _parsed(raw, parse, name, method, corrupt, context, trace_context), context):
            yield response

    return handler


def _stream_stream(behaviour, parse, method, corrupt, trace_context):
    """Each message parsed as it is read; one that does not parse is counted and raises DecodeError from the
    request iterator, which the stream's own code answers (server/v2/stream.py: the stream ends INVALID_ARGUMENT)."""
    async def handler(raw_requests, context):
        if trace_context:  # one context for the stream's requests: its metadata is the call's
            INCOMING.set(from_metadata(context.invocation_metadata()))

        async def requests():
            async for raw in raw_requests:
                RECEIVED_BYTES.set(len(raw))
                try:
                    yield parse(raw)
                except DecodeError:
                    corrupt.seen(method, context.peer())
                    raise

        async for response in behaviour(requests(), context):
            yield response

    return handler
