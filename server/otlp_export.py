"""Request traces as OpenTelemetry spans, sent to a collector over OTLP/HTTP (Triton's `--trace-config
mode=opentelemetry`): where Jaeger, Tempo or any OTLP backend shows the server's part of a caller's trace.

Spans per traced request, Triton's structure (its docs/user_guide/trace.md and qa/L0_trace's nesting test): a root
span "InferRequest" (its parent the caller's span when the request carried a W3C traceparent, server/otel_context.py),
a model span named after the model (events REQUEST_START, QUEUE_START, REQUEST_END), and under it a "compute" span
per segment run the request rode in, where Triton has one (events COMPUTE_START, COMPUTE_END). Early exit's own facts
are attributes: on the model span `auxnet.exit`, `auxnet.layer`, `auxnet.stop_reason`, `auxnet.budget_ms`,
`auxnet.budget_met`, `auxnet.priority`, `auxnet.cache_hit`, and a QUEUE_START event per exit queue it joined; on
each compute span `auxnet.exit`, `auxnet.batch_size` (rows computed) and `auxnet.requests`. A request that did not
end OK has the status code as the spans' error status.

Export as the OpenTelemetry SDK's batch span processor does (the same settings and defaults, also read from the
OTEL_BSP_* variables): finished traces wait in a bounded queue; a thread sends up to `max_export_batch_size`
requests' spans when that many wait or every `schedule_delay_ms`, as protobuf (OTLP/HTTP's default encoding),
gzip if asked. A full queue drops the newest trace, never blocks a request. Retries follow the OTLP specification:
429, 502, 503 and 504 and connection failures, with exponential back-off or the server's Retry-After, within the
export timeout; any other status drops that batch. Every outcome is counted per span (auxnet_otlp_spans_total) and
failures are logged at most once a minute. At shutdown what is queued gets a last attempt of at most
`shutdown_timeout_s`. The settings and their checks: server/otlp_settings.py.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from server.log_limit import LogLimit
from server.otlp_settings import OtlpSettings, target

log = logging.getLogger("auxnet.server")

RETRYABLE = {429, 502, 503, 504}  # OTLP/HTTP: "retryable response codes"
ROOT_SPAN, COMPUTE_SPAN = "InferRequest", "compute"
SCOPE = InstrumentationScope(name="auxnet.server")


# --- spans ------------------------------------------------------------------------------------------------

_VALUE_FIELD = {bool: "bool_value", int: "int_value", float: "double_value", str: "string_value"}


def attributes(pairs: dict) -> list[dict]:
    """Attributes (KeyValue messages in dict form) of the values that are set: None leaves one out rather than send
    it empty. Dict form: protobuf builds the messages in C, a third faster than KeyValue(AnyValue(...)) objects."""
    return [{"key": k, "value": {_VALUE_FIELD.get(type(v), "string_value"): v if type(v) in _VALUE_FIELD else str(v)}}
            for k, v in pairs.items() if v is not None]


def trace_spans(trace, wall_offset_ns: int, spans, new_id: Callable[[int], bytes] = os.urandom) -> None:
    """A finished request's spans (server/tracing.py's Trace), added to `spans` (a ScopeSpans' repeated field: built
    in place, not copied in). `wall_offset_ns`: Unix time minus time.monotonic(), in ns (OpenTelemetry's times are the
    wall clock; the engine's marks are monotonic). `new_id(n)`: n random bytes. ~40 us for five exits on a 2-core EPYC
    (RESULTS §52)."""
    def ns(t: float) -> int:
        return int(t * 1e9) + wall_offset_ns

    context = trace.context
    trace_id = context.trace_id if context is not None else new_id(16)
    root_id, model_id = new_id(8), new_id(8)
    status = {} if trace.status == "OK" else {"code": Status.STATUS_CODE_ERROR, "message": trace.status}
    start, end = ns(trace.start), ns(trace.end)
    # Triton's mark for a response complete; ours: its answer set on the event loop
    answered = [] if trace.answered is None else [{"name": "INFER_RESPONSE_COMPLETE", "time_unix_nano": ns(trace.answered)}]
    spans.add(trace_id=trace_id, span_id=root_id, name=ROOT_SPAN, kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=start,
              end_time_unix_nano=end, status=status, parent_span_id=context.parent_span_id if context is not None else b"",
              trace_state=context.tracestate if context is not None else "", events=answered)
    events = [{"name": "REQUEST_START", "time_unix_nano": start}]
    exits = sorted(trace.exits.items())
    for k, (queued, *_) in exits:
        if queued is not None:
            events.append({"name": "QUEUE_START", "time_unix_nano": ns(queued), "attributes": attributes({"auxnet.exit": k})})
    events.append({"name": "REQUEST_END", "time_unix_nano": end})
    spans.add(trace_id=trace_id, span_id=model_id, parent_span_id=root_id, name=trace.model, kind=Span.SPAN_KIND_INTERNAL,
              start_time_unix_nano=start, end_time_unix_nano=end, status=status, events=events,
              attributes=attributes({"model_name": trace.model, "model_version": trace.version, "auxnet.status": trace.status,
                                     "auxnet.exit": trace.exit, "auxnet.layer": trace.layer, "auxnet.stop_reason": trace.reason,
                                     "auxnet.budget_ms": trace.budget_ms, "auxnet.budget_met": trace.budget_met,
                                     "auxnet.priority": trace.priority, "auxnet.cache_hit": trace.cache_hit or None}))
    for k, (_, began, ended, rows, requests) in exits:
        if began is None:
            continue  # queued there, never computed (dropped, or its caller left)
        b, e = ns(began), ns(ended)
        spans.add(trace_id=trace_id, span_id=new_id(8), parent_span_id=model_id, name=COMPUTE_SPAN,
                  kind=Span.SPAN_KIND_INTERNAL, start_time_unix_nano=b, end_time_unix_nano=e,
                  attributes=attributes({"auxnet.exit": k, "auxnet.batch_size": rows, "auxnet.requests": requests}),
                  events=[{"name": "COMPUTE_START", "time_unix_nano": b}, {"name": "COMPUTE_END", "time_unix_nano": e}])


def span_count(trace) -> int:
    """How many spans trace_spans makes of a trace: root, model, one per segment run."""
    return 2 + sum(1 for e in trace.exits.values() if e[1] is not None)


def export_request(traces, resource: dict, wall_offset_ns: int) -> tuple[bytes, int]:
    """(ExportTraceServiceRequest bytes, span count) of finished traces."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    for a in attributes(resource):
        resource_spans.resource.attributes.add(**a)
    scope_spans = resource_spans.scope_spans.add(scope=SCOPE)
    for t in traces:
        trace_spans(t, wall_offset_ns, scope_spans.spans)
    return request.SerializeToString(), len(scope_spans.spans)


# --- export -----------------------------------------------------------------------------------------------

class OtlpExporter:
    """The batch span processor and OTLP/HTTP exporter in one thread. `add` is called on the event loop; `count(outcome,
    spans)` (exported, queue_full, rejected, failed, shutdown) from either thread."""

    def __init__(self, settings: OtlpSettings, count: Callable[[str, int], None] = lambda outcome, n: None):
        self.settings, self.count = settings, count
        self.scheme, self.host, self.port, self.path = target(settings.url)
        self.queue: deque = deque()
        self.wake = threading.Condition()
        self.closing = False
        self.stop_retrying = threading.Event()  # set when shutdown's time is up: back-off sleeps end at once
        self.connection: http.client.HTTPConnection | None = None
        self.full_limit, self.fail_limit = LogLimit(), LogLimit()
        self.thread = threading.Thread(target=self._run, name="otlp-export", daemon=True)
        self.thread.start()
        # Each process is an instance of the service (OpenTelemetry's semantic conventions): under --workers the
        # backend tells the workers apart; the settings' own attributes win.
        self.resource = {"service.instance.id": str(uuid.uuid4()), "host.name": socket.gethostname(), "process.pid": os.getpid(),
                         **settings.resource}
        log.info("request traces go to %s as OTLP/HTTP spans (resource %s)", settings.url, self.resource)

    def add(self, trace) -> None:
        with self.wake:
            if self.closing:  # a request that ended during shutdown, after the last batch was taken
                self.count("shutdown", span_count(trace))
                return
            if len(self.queue) >= self.settings.max_queue_size:
                self.count("queue_full", span_count(trace))
                if (also := self.full_limit.due()) is not None:
                    log.warning("OTLP export queue full (%d requests' traces waiting for %s): a trace dropped%s",
                                len(self.queue), self.settings.url, also)
                return
            self.queue.append(trace)
            if len(self.queue) >= self.settings.max_export_batch_size:
                self.wake.notify()

    def close(self) -> None:
        """At shutdown: send what is queued, for at most shutdown_timeout_s; count what is left as dropped."""
        with self.wake:
            self.closing = True
            self.wake.notify()
        self.thread.join(self.settings.shutdown_timeout_s)
        if self.thread.is_alive():
            self.stop_retrying.set()
            self.thread.join(1.0)
        if self.connection is not None:
            self.connection.close()

    def _run(self) -> None:
        s = self.settings
        while True:
            with self.wake:
                if not self.closing and len(self.queue) < s.max_export_batch_size:
                    self.wake.wait(s.schedule_delay_ms / 1000)
                batch = [self.queue.popleft() for _ in range(min(len(self.queue), s.max_export_batch_size))]
                done = self.closing and not self.queue
            if batch:
                if self.stop_retrying.is_set():
                    self.count("shutdown", sum(span_count(t) for t in batch))
                else:
                    self._export(batch)
            if done:
                return

    def _export(self, traces: list) -> None:
        body, spans = export_request(traces, self.resource, time.time_ns() - time.monotonic_ns())
        headers = {"Content-Type": "application/x-protobuf", **self.settings.headers}
        if self.settings.gzip:
            body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
        give_up_at = time.monotonic() + self.settings.export_timeout_s
        delay = 0.5
        while True:
            status, reply, retry_after = self._post(body, headers, give_up_at)
            if status == 200:
                self._accepted(reply, spans)
                return
            retryable = status is None or status in RETRYABLE
            wait = retry_after if retry_after is not None else delay * (0.5 + random.random())
            if not retryable or time.monotonic() + wait >= give_up_at or self.stop_retrying.wait(wait):
                outcome = "failed" if retryable else "rejected"
                self.count(outcome, spans)
                if (also := self.fail_limit.due()) is not None:
                    why = f"HTTP {status}: {reply[:200]!r}" if status is not None else reply.decode(errors="replace")
                    log.warning("OTLP export to %s %s: %d spans dropped (%s)%s", self.settings.url,
                                "failed" if retryable else "refused", spans, why, also)
                return
            delay = min(delay * 2, 30.0)

    def _accepted(self, reply: bytes, spans: int) -> None:
        rejected = 0
        try:
            partial = ExportTraceServiceResponse.FromString(reply).partial_success
            rejected = min(partial.rejected_spans, spans)
            if rejected and (also := self.fail_limit.due()) is not None:
                log.warning("OTLP collector %s rejected %d of %d spans: %s%s", self.settings.url, rejected, spans,
                            partial.error_message[:200], also)
        except Exception:  # noqa: BLE001 - a collector's malformed reply body does not undo its 200
            pass
        self.count("exported", spans - rejected)
        if rejected:
            self.count("rejected", rejected)

    def _post(self, body: bytes, headers: dict, give_up_at: float) -> tuple[int | None, bytes, float | None]:
        """(status, reply body, Retry-After seconds or None); status None and the error as the body where no
        reply came (refused, reset, timed out): the connection is then made again."""
        timeout = max(0.1, give_up_at - time.monotonic())
        try:
            if self.connection is None:
                kind = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
                self.connection = kind(self.host, self.port, timeout=timeout)
            self.connection.timeout = timeout
            if self.connection.sock is not None:
                self.connection.sock.settimeout(timeout)
            self.connection.request("POST", self.path, body=body, headers=headers)
            response = self.connection.getresponse()
            reply = response.read()
            return response.status, reply, _seconds(response.getheader("Retry-After"))
        except (OSError, http.client.HTTPException) as e:  # timeouts are OSErrors
            if self.connection is not None:
                self.connection.close()
            self.connection = None
            return None, f"{type(e).__name__}: {e}".encode(), None


def _seconds(retry_after: str | None) -> float | None:
    """Retry-After as seconds (the delay form; an HTTP date is not honoured, the back-off applies instead)."""
    try:
        return max(0.0, float(retry_after)) if retry_after else None
    except ValueError:
        return None
