"""W3C Trace Context (https://www.w3.org/TR/trace-context/): the `traceparent` and `tracestate` a caller sends, so
that a request's spans join the caller's distributed trace (OpenTelemetry's default propagator sends these).

A handler reads them from gRPC metadata or HTTP headers and sets INCOMING for its own task (contextvars: each call
has its own context, and the engine's `classify` runs in it); server/tracing.py reads it when it samples. Only where
tracing is in OpenTelemetry mode (server/otlp_export.py) are the headers read at all.

A header that breaks the format is ignored, as the specification says (the request then starts a trace of its own,
if sampled): it is the caller's instrumentation that is wrong, not the request.
"""

from __future__ import annotations

import contextvars
import re
from dataclasses import dataclass

# version 2, trace-id 32, parent-id 16, flags 2 lowercase hex digits; a later version may append "-..." fields
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
MAX_TRACESTATE = 512  # the specification's "at least 512 characters" a platform should propagate


@dataclass(frozen=True)
class TraceContext:
    trace_id: bytes  # 16 bytes
    parent_span_id: bytes  # 8 bytes: the caller's span, which our root span names as its parent
    sampled: bool  # the caller's decision (trace-flags bit 0)
    tracestate: str = ""


INCOMING: contextvars.ContextVar[TraceContext | None] = contextvars.ContextVar("incoming_trace_context", default=None)


def parse(traceparent: list[str], tracestate: list[str]) -> TraceContext | None:
    """The context of a request's headers (each the list of that header's values), or None where there is none or it
    is not valid: several traceparent headers, a wrong form, version ff, an all-zero trace or parent id, or version 00
    with fields after the flags."""
    if len(traceparent) != 1:
        return None
    m = _TRACEPARENT.fullmatch(traceparent[0].strip())
    if m is None:
        return None
    version, trace_id, parent_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return TraceContext(bytes.fromhex(trace_id), bytes.fromhex(parent_id), bool(int(flags, 16) & 1), _state(tracestate))


def _state(values: list[str]) -> str:
    """tracestate's list members (several headers join with ','), cut at a member boundary to MAX_TRACESTATE
    characters: the specification lets a platform drop members past its limit, never cut one."""
    members = [m.strip() for v in values for m in v.split(",") if m.strip()]
    kept, size = [], 0
    for m in members:
        size += len(m) + (1 if kept else 0)
        if size > MAX_TRACESTATE:
            break
        kept.append(m)
    return ",".join(kept)


def from_metadata(metadata) -> TraceContext | None:
    """From gRPC invocation metadata ((key, value) pairs, keys lowercase)."""
    parent, state = [], []
    for key, value in metadata or ():
        if key == "traceparent":
            parent.append(value)
        elif key == "tracestate":
            state.append(value)
    return parse(parent, state) if parent else None


def from_headers(headers) -> TraceContext | None:
    """From an HTTP request's headers (aiohttp's case-insensitive multidict)."""
    parent = headers.getall("traceparent", [])
    return parse(parent, headers.getall("tracestate", [])) if parent else None
