"""Request traces as OpenTelemetry spans (--trace-mode opentelemetry; server/otel_context.py, server/otlp_export.py):
the W3C traceparent by the specification's rules, a trace's spans by hand, the exporter's batching, retries and
bounds against a stand-in collector that decodes with OpenTelemetry's own classes, and a real server whose requests
over auxnet.v1 gRPC and the Open Inference Protocol's HTTP join their caller's trace."""

import asyncio
import base64
import itertools
import os
import socket
import subprocess
import sys
import time
import uuid

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from multidict import CIMultiDict
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, Span, Status
from tritonclient.utils import InferenceServerException

from protos.auxnet.v1 import inference_pb2_grpc as pb_grpc
from server.__main__ import get_args_parser, trace_settings
from server.client import Client, classify_request
from server.otel_context import INCOMING, MAX_TRACESTATE, TraceContext, from_headers, from_metadata, parse
from server.otlp_export import OtlpExporter, trace_spans
from server.otlp_settings import OtlpSettings, settings_from_environment
from server.tracing import Trace, Tracer, TraceSettings
from tests.server.helpers import images, png, wait_for
from tests.server.otlp_collector import running_collector
from tests.server.test_engine import in_loop, make_engine, x
from tests.server.v2_helpers import http, v2_server

TRACE_ID = "0af7651916cd43dd8448eb211c12666c"  # the specification's example (and Triton's test's)
PARENT_ID = "b7ad6b7169242424"
SAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-01"
MODEL = "tiny"


# --- the W3C traceparent --------------------------------------------------------------------------------

def test_a_valid_traceparent_gives_the_callers_ids_and_decision():
    c = parse([SAMPLED], ["congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7"])
    assert (c.trace_id.hex(), c.parent_span_id.hex(), c.sampled) == (TRACE_ID, PARENT_ID, True)
    assert c.tracestate == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"  # two headers are one list
    assert parse([f"00-{TRACE_ID}-{PARENT_ID}-00"], []).sampled is False
    assert parse([f"00-{TRACE_ID}-{PARENT_ID}-03"], []).sampled is True  # flags other than bit 0: not ours to read
    # a later version may carry more fields; version 00 may not
    assert parse([f"cc-{TRACE_ID}-{PARENT_ID}-01-what-the-future-holds"], []).trace_id.hex() == TRACE_ID
    assert parse([f"00-{TRACE_ID}-{PARENT_ID}-01-more"], []) is None


@pytest.mark.parametrize("header", [
    f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",  # uppercase hex
    f"ff-{TRACE_ID}-{PARENT_ID}-01",  # version ff is forbidden
    f"00-{'0' * 32}-{PARENT_ID}-01",  # all-zero trace id
    f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
    f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01",  # short
    f"00-{TRACE_ID}-{PARENT_ID}-1",
    f"00_{TRACE_ID}_{PARENT_ID}_01",
    "", "garbage",
])
def test_a_malformed_traceparent_is_ignored(header):
    assert parse([header], ["a=b"]) is None


def test_several_traceparents_are_ignored_and_tracestate_is_cut_at_a_member():
    assert parse([SAMPLED, SAMPLED], []) is None
    members = [f"k{i}={'v' * 40}" for i in range(20)]  # 43-44 characters each
    state = parse([SAMPLED], [",".join(members)]).tracestate
    assert len(state) <= MAX_TRACESTATE and state.split(",") == members[:len(state.split(","))] and len(state) > 450


def test_metadata_and_headers_are_read_by_their_names():
    assert from_metadata((("authorization", "x"), ("traceparent", SAMPLED), ("tracestate", "a=1"))).tracestate == "a=1"
    assert from_metadata((("authorization", "x"),)) is None and from_metadata(None) is None
    assert from_headers(CIMultiDict([("TraceParent", SAMPLED)])).trace_id.hex() == TRACE_ID
    assert from_headers(CIMultiDict([("Traceparent", SAMPLED), ("traceparent", SAMPLED)])) is None


# --- spans by hand --------------------------------------------------------------------------------------

def ids():
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def spans_of_trace(trace, wall_offset_ns):
    spans = ScopeSpans().spans
    trace_spans(trace, wall_offset_ns, spans, new_id=ids())
    return list(spans)


def test_a_traces_spans_by_hand():
    context = TraceContext(bytes.fromhex(TRACE_ID), bytes.fromhex(PARENT_ID), True, "a=1")
    t = Trace(7, "m", "v3", None, 10.0, 25.0, 1, context=context)
    t.queue(0, 10.001)
    t.segment(0, 10.002, 10.003, 3, 2)
    t.segment(1, 10.003, 10.005, 2, 1)  # went on in the same thread call: never queued at exit 1
    t.answered, t.end = 10.006, 10.007
    t.status, t.exit, t.layer, t.reason, t.budget_met = "OK", 1, 25, "confident", True
    root, model, c0, c1 = spans_of_trace(t, 1_000)
    assert [s.name for s in (root, model, c0, c1)] == ["InferRequest", "m", "compute", "compute"]
    assert {s.trace_id.hex() for s in (root, model, c0, c1)} == {TRACE_ID}
    assert (root.span_id, model.span_id, c0.span_id, c1.span_id) == (b"\0" * 7 + b"\1", b"\0" * 7 + b"\2",
                                                                       b"\0" * 7 + b"\3", b"\0" * 7 + b"\4")
    assert (root.parent_span_id.hex(), model.parent_span_id, c0.parent_span_id, c1.parent_span_id) == (
        PARENT_ID, root.span_id, model.span_id, model.span_id)
    assert root.trace_state == "a=1" and root.kind == Span.SPAN_KIND_SERVER
    ns = lambda s: round(s * 1e9) + 1_000  # noqa: E731
    assert (root.start_time_unix_nano, root.end_time_unix_nano) == (ns(10.0), ns(10.007))
    assert (model.start_time_unix_nano, model.end_time_unix_nano) == (ns(10.0), ns(10.007))
    assert (c0.start_time_unix_nano, c0.end_time_unix_nano, c1.start_time_unix_nano, c1.end_time_unix_nano) == (
        ns(10.002), ns(10.003), ns(10.003), ns(10.005))
    assert [(e.name, e.time_unix_nano) for e in root.events] == [("INFER_RESPONSE_COMPLETE", ns(10.006))]
    assert [(e.name, e.time_unix_nano) for e in model.events] == [("REQUEST_START", ns(10.0)), ("QUEUE_START", ns(10.001)),
                                                                  ("REQUEST_END", ns(10.007))]
    assert [e.name for e in c0.events] == ["COMPUTE_START", "COMPUTE_END"]
    attrs = {kv.key: kv.value for kv in model.attributes}
    assert (attrs["model_name"].string_value, attrs["model_version"].string_value, attrs["auxnet.exit"].int_value,
            attrs["auxnet.layer"].int_value, attrs["auxnet.stop_reason"].string_value, attrs["auxnet.budget_ms"].double_value,
            attrs["auxnet.budget_met"].bool_value, attrs["auxnet.priority"].int_value) == ("m", "v3", 1, 25, "confident", 25.0, True, 1)
    assert "auxnet.cache_hit" not in attrs  # only hits carry it
    assert {kv.key: kv.value.int_value for kv in c0.attributes} == {"auxnet.exit": 0, "auxnet.batch_size": 3, "auxnet.requests": 2}
    assert root.status.code == Status.STATUS_CODE_UNSET


def test_a_failed_request_without_a_caller_has_an_error_status_and_a_trace_of_its_own():
    t = Trace(1, "m", "v", None, 5.0, None, 1)
    t.queue(0, 5.001)
    t.segment(0, 5.002, 5.003, 1, 1)
    t.queue(1, 5.004)  # queued at exit 1, then its caller left
    t.end, t.status = 5.01, "CANCELLED"
    root, model, compute = spans_of_trace(t, 0)  # no compute span where nothing was computed
    assert root.parent_span_id == b"" and root.trace_id == b"\0" * 15 + b"\1" and root.trace_state == ""
    assert (root.status.code, root.status.message) == (model.status.code, model.status.message) == (Status.STATUS_CODE_ERROR, "CANCELLED")
    queued = [(e.name, {kv.key: kv.value.int_value for kv in e.attributes}) for e in model.events if e.name == "QUEUE_START"]
    assert queued == [("QUEUE_START", {"auxnet.exit": 0}), ("QUEUE_START", {"auxnet.exit": 1})]
    attrs = {kv.key for kv in model.attributes}
    assert "auxnet.exit" not in attrs and "auxnet.budget_ms" not in attrs  # unset values are left out, not sent empty


# --- the exporter ---------------------------------------------------------------------------------------

def finished_trace(i: int) -> Trace:
    t = Trace(i, "m", "v", None, time.monotonic(), None, 1)
    t.segment(0, t.start, t.start + 0.001, 1, 1)
    t.end, t.status = t.start + 0.002, "OK"
    return t


class Counts(dict):
    def __call__(self, outcome, n):
        self[outcome] = self.get(outcome, 0) + n


def test_a_batch_goes_when_it_is_full_and_the_rest_at_shutdown():
    with running_collector() as collector:
        counts = Counts()
        exporter = OtlpExporter(OtlpSettings(url=collector.url, schedule_delay_ms=60_000, max_export_batch_size=4,
                                             resource={"service.name": "t"}), counts)
        for i in range(10):
            exporter.add(finished_trace(i))
        assert wait_for(lambda: counts.get("exported") == 8 * 3)  # two full batches, long before the minute's schedule
        exporter.close()
        assert [len(r.resource_spans[0].scope_spans[0].spans) for r in collector.requests] == [12, 12, 6]
        assert counts == {"exported": 30} and collector.resource() == {"service.name": "t"}
        process = collector.resource(per_process=True)
        assert process["process.pid"] == os.getpid() and process["host.name"] == socket.gethostname()
        assert uuid.UUID(process["service.instance.id"]).version == 4


def test_a_full_queue_drops_the_newest_and_counts_its_spans():
    counts = Counts()
    exporter = OtlpExporter(OtlpSettings(url="http://127.0.0.1:9/v1/traces", schedule_delay_ms=60_000, max_export_batch_size=5,
                                         max_queue_size=5, export_timeout_s=5, shutdown_timeout_s=0.5), counts)
    with exporter.wake:  # (a reentrant lock) the export thread cannot take any while the queue fills
        for i in range(8):
            exporter.add(finished_trace(i))
        assert counts == {"queue_full": 9}  # three traces of three spans: never a wait on the event loop
    exporter.close()
    # nothing listens on port 9: the five queued are retried until shutdown's time is up, then counted as failed
    assert counts == {"queue_full": 9, "failed": 15}


def test_retryable_statuses_are_retried_and_others_drop_the_batch():
    with running_collector() as collector:
        collector.statuses = [503, 502, 200, 400]
        counts = Counts()
        exporter = OtlpExporter(OtlpSettings(url=collector.url, schedule_delay_ms=10, export_timeout_s=5), counts)
        exporter.add(finished_trace(1))
        assert wait_for(lambda: counts.get("exported") == 3)
        exporter.add(finished_trace(2))  # the collector answers 400: not retried
        assert wait_for(lambda: counts.get("rejected") == 3)
        collector.partial_rejections = 2
        exporter.add(finished_trace(3))
        assert wait_for(lambda: counts.get("rejected") == 5)
        exporter.close()
        assert counts == {"exported": 4, "rejected": 5}
        assert len(collector.headers) == 5  # 503, 502, 200, 400, 200
        assert collector.headers[0]["Content-Type"] == "application/x-protobuf"


def test_a_collector_that_is_down_costs_at_most_the_export_timeout():
    counts = Counts()
    exporter = OtlpExporter(OtlpSettings(url="http://127.0.0.1:9/v1/traces", schedule_delay_ms=10, export_timeout_s=1.0), counts)
    began = time.monotonic()
    exporter.add(finished_trace(1))
    assert wait_for(lambda: counts.get("failed") == 3, timeout_s=5)
    assert time.monotonic() - began < 3
    exporter.close()


def test_shutdown_sends_what_is_queued_and_gzip_and_headers_are_honoured():
    with running_collector() as collector:
        settings = settings_from_environment(collector.url, ["service.name=svc", "deployment.environment=test"], env={
            "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=se%20cret", "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
            "OTEL_BSP_SCHEDULE_DELAY": "60000", "OTEL_RESOURCE_ATTRIBUTES": "service.name=overridden,team=vision"})
        counts = Counts()
        exporter = OtlpExporter(settings, counts)
        for i in range(3):
            exporter.add(finished_trace(i))
        exporter.close()  # a minute before the schedule would have sent them
        assert counts == {"exported": 9} and len(collector.spans()) == 9
        assert collector.headers[0]["x-api-key"] == "se cret" and collector.headers[0]["Content-Encoding"] == "gzip"
        assert collector.resource() == {"service.name": "svc", "deployment.environment": "test", "team": "vision"}


def test_the_environment_names_the_endpoint_and_bad_values_are_refused_by_name():
    assert settings_from_environment(None, [], env={}).url == "http://localhost:4318/v1/traces"
    assert settings_from_environment(None, [], env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}).url == "http://c:4318/v1/traces"
    assert settings_from_environment(None, [], env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                                                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://t/x"}).url == "https://t/x"
    assert settings_from_environment(None, [], env={"OTEL_SERVICE_NAME": "s"}).resource == {"service.name": "s"}
    for env, says in [({"OTEL_BSP_MAX_QUEUE_SIZE": "many"}, "OTEL_BSP_MAX_QUEUE_SIZE 'many' is not a number"),
                      ({"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, "gzip or none"),
                      ({"OTEL_RESOURCE_ATTRIBUTES": "novalue"}, "OTEL_RESOURCE_ATTRIBUTES 'novalue' must be KEY=VALUE"),
                      ({"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4096"}, "batch size 4096 must be at least 1 and at most the queue size 2048")]:
        with pytest.raises(ValueError, match=says):
            settings_from_environment(None, [], env=env)


@pytest.mark.parametrize("argv, says", [
    (["--trace-otlp-url", "http://c/v1/traces"], "--trace-otlp-url is for --trace-mode opentelemetry"),
    (["--trace-resource", "a=b"], "--trace-resource is for --trace-mode opentelemetry"),
    (["--trace-rate", "0", "--trace-file", "t.json"], "0, tracing only requests that carry a sampled traceparent, is for"),
    (["--trace-mode", "opentelemetry", "--trace-file", "t.json"], "a trace file has no use in opentelemetry mode"),
    (["--trace-mode", "opentelemetry", "--trace-otlp-url", "ftp://c/x"], "the scheme must be http or https"),
    (["--trace-mode", "opentelemetry", "--trace-otlp-url", "http://:4318/x"], "names no host"),
    (["--trace-mode", "opentelemetry", "--trace-otlp-url", "http://c:99999/x"], "the port must be a number from 1 to 65535"),
    (["--trace-mode", "opentelemetry", "--trace-otlp-url", "c:0/v1/traces"], "the port must be a number from 1 to 65535"),
    (["--trace-mode", "opentelemetry", "--trace-otlp-url", "http://[::1"], "OTLP URL 'http://[::1' does not parse"),
    (["--trace-mode", "opentelemetry", "--trace-otlp-url", "-5"], "'-5' is neither a host name"),
    (["--trace-mode", "opentelemetry", "--trace-otlp-url", "a=b,c"], "'a=b,c' is neither a host name"),
    (["--trace-mode", "opentelemetry", "--trace-otlp-url", "a" * 300], "is neither a host name"),
    (["--trace-mode", "opentelemetry", "--trace-resource", ""], "--trace-resource '' must be KEY=VALUE"),
    (["--trace-mode", "opentelemetry", "--trace-resource", "service.name"], "--trace-resource 'service.name' must be KEY=VALUE"),
    (["--trace-mode", "opentelemetry", "--trace-bsp-max-queue-size", "10", "--trace-bsp-max-export-batch-size", "20"],
     "batch size 20 must be at least 1 and at most the queue size 10"),
    (["--trace-mode", "opentelemetry", "--trace-bsp-max-queue-size", "0"], "queue size 0 must be from 1 to 1000000"),
    (["--trace-mode", "opentelemetry", "--trace-bsp-schedule-delay-ms", "0"], "schedule delay 0 ms must be at least 1 ms"),
])
def test_bad_tracing_options_are_refused_by_name(argv, says, capsys):
    parser = get_args_parser()
    with pytest.raises(SystemExit) as e:
        trace_settings(parser, parser.parse_args(["--repo", "r", *argv]))
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_opentelemetry_mode_is_on_without_a_file_and_takes_rate_zero():
    parser = get_args_parser()
    trace, otlp = trace_settings(parser, parser.parse_args(["--repo", "r", "--trace-mode", "opentelemetry", "--trace-rate", "0",
                                                            "--trace-otlp-url", "collector:4318/v1/traces"]))
    assert (trace.level, trace.rate, trace.mode, trace.file) == ("TIMESTAMPS", 0, "opentelemetry", None)
    assert otlp.url == "collector:4318/v1/traces"  # Triton's form without a scheme: http
    for url in ("http://[::1]:4318/v1/traces", "https://otel.example.com/v1/traces", "10.0.0.7:4318/v1/traces",
                "otel_collector.ns.svc:4318/x"):
        assert OtlpSettings(url=url).url == url


# --- sampling in the engine -----------------------------------------------------------------------------

@in_loop
async def test_a_sampled_caller_is_traced_whatever_the_rate_and_an_unsampled_one_never(tmp_path):
    with running_collector() as collector:
        engine = make_engine(n=3)
        engine.tracer = Tracer(TraceSettings(None, "TIMESTAMPS", rate=0, mode="opentelemetry"),
                               otlp=OtlpSettings(url=collector.url, schedule_delay_ms=10))
        engine.start()

        async def classify(traceparent):
            INCOMING.set(parse([traceparent], []) if traceparent else None)  # as a handler does, in this task
            return await engine.classify(x(2), time.monotonic(), None, None, 2, None)

        await asyncio.gather(asyncio.create_task(classify(SAMPLED)), asyncio.create_task(classify(None)),
                             asyncio.create_task(classify(f"00-{TRACE_ID}-{PARENT_ID}-00")))
        await engine.stop()
        engine.tracer.close()
        spans = collector.spans()
        assert [s.name for s in spans].count("InferRequest") == 1  # rate 0: only the sampled caller
        assert {s.trace_id.hex() for s in spans} == {TRACE_ID} and len(spans) >= 3


# --- a real server --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def otel_server(tiny_repo):
    with running_collector() as collector:
        with v2_server(tiny_repo, trace=TraceSettings(None, "TIMESTAMPS", rate=0, mode="opentelemetry"),
                       otlp=OtlpSettings(url=collector.url, schedule_delay_ms=20,
                                         resource={"service.name": "classifier", "team": "vision"})) as (app, target, http_at):
            yield app, target, http_at, collector


def spans_of(collector, trace_id: str, n: int) -> list:
    assert wait_for(lambda: len([s for s in collector.spans() if s.trace_id.hex() == trace_id]) >= n)
    return [s for s in collector.spans() if s.trace_id.hex() == trace_id]


def check_nesting(spans, caller_span: str) -> dict:
    by_name = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    (root,), (model,) = by_name["InferRequest"], by_name[MODEL]
    assert root.parent_span_id.hex() == caller_span and model.parent_span_id == root.span_id
    assert by_name["compute"] and all(c.parent_span_id == model.span_id for c in by_name["compute"])
    assert root.start_time_unix_nano <= min(c.start_time_unix_nano for c in by_name["compute"])
    assert max(c.end_time_unix_nano for c in by_name["compute"]) <= root.end_time_unix_nano
    assert abs(root.start_time_unix_nano / 1e9 - time.time()) < 60  # the wall clock, not the monotonic one
    return {kv.key: kv.value for kv in model.attributes}


def test_a_grpc_call_with_a_traceparent_joins_its_callers_trace(otel_server):
    app, target, _, collector = otel_server
    trace_id, caller = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.EarlyExitServiceStub(channel)
        answer = stub.Classify(classify_request(png(images(1)[0]), max_exit=1),
                               metadata=(("traceparent", f"00-{trace_id}-{caller}-01"), ("tracestate", "vendor=1")))
        stub.Classify(classify_request(png(images(1)[0])))  # no traceparent and rate 0: not traced
    spans = spans_of(collector, trace_id, 3)
    attrs = check_nesting(spans, caller)
    assert attrs["auxnet.exit"].int_value == answer.exit_index == 1 and attrs["auxnet.status"].string_value == "OK"
    assert [s.trace_state for s in spans if s.name == "InferRequest"] == ["vendor=1"]
    assert collector.resource()["service.name"] == "classifier" and collector.resource()["team"] == "vision"
    time.sleep(0.2)
    assert {s.trace_id.hex() for s in collector.spans() if s.name == "InferRequest"} <= {trace_id, TRACE_ID}


def test_an_http_infer_with_a_traceparent_joins_its_callers_trace(otel_server):
    app, _, http_at, collector = otel_server
    body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"content_type": "base64"},
                        "data": [base64.b64encode(png(images(1)[0])).decode()]}]}
    status, _, _ = http(f"http://{http_at}/v2/models/{MODEL}/infer", "POST", body, headers={"traceparent": SAMPLED})
    assert status == 200
    attrs = check_nesting(spans_of(collector, TRACE_ID, 3), PARENT_ID)
    assert attrs["model_name"].string_value == MODEL
    assert wait_for(lambda: app.metrics.otlp_spans.labels("exported")._value.get() >= 3)


def test_the_trace_settings_say_opentelemetry_and_refuse_a_file(otel_server):
    _, target, _, _ = otel_server
    with tgrpc.InferenceServerClient(target) as client:
        settings = client.get_trace_settings(as_json=True)["settings"]
        assert settings["trace_mode"]["value"] == ["opentelemetry"] and settings["trace_rate"]["value"] == ["0"]
        with pytest.raises(InferenceServerException, match="trace_file has no use in opentelemetry mode"):
            client.update_trace_settings(settings={"trace_file": "t.json"})
        with pytest.raises(InferenceServerException, match="cannot change to triton at run time"):
            client.update_trace_settings(settings={"trace_mode": "triton"})
        assert client.update_trace_settings(settings={"trace_rate": "5"}, as_json=True)["settings"]["trace_rate"]["value"] == ["5"]
        client.update_trace_settings(settings={"trace_rate": "0"})


def test_the_python_clients_batch_carries_a_traceparent_to_every_image(otel_server):
    """server.client.Client's `metadata`: a ClassifyBatch of three images is three traced requests of one trace."""
    _, target, _, collector = otel_server
    trace_id = "22222222222222222222222222222222"
    with Client(target) as client:
        client.classify_batch([png(a) for a in images(3)], metadata=[("traceparent", f"00-{trace_id}-{PARENT_ID}-01")])
    spans = spans_of(collector, trace_id, 9)
    roots = [s for s in spans if s.name == "InferRequest"]
    assert len(roots) == 3 and all(r.parent_span_id.hex() == PARENT_ID for r in roots)


def test_a_progressive_call_with_raw_pixels_is_traced_from_its_metadata(otel_server):
    """auxnet.v1 with a raw array and a progressive call: the stream's metadata is read once for the call."""
    _, target, _, collector = otel_server
    trace_id = "11111111111111111111111111111111"
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.EarlyExitServiceStub(channel)
        answers = list(stub.ClassifyProgressive(classify_request(np.zeros((32, 32, 3), np.uint8)),
                                                metadata=(("traceparent", f"00-{trace_id}-{PARENT_ID}-01"),)))
    assert answers
    check_nesting(spans_of(collector, trace_id, 3), PARENT_ID)


def test_the_server_serves_without_opentelemetry_and_refuses_its_mode_by_name():
    """opentelemetry-proto is imported for --trace-mode opentelemetry only: an install without it (the GPU machine's
    --no-deps tree) serves every other way, and asking for the mode there is refused naming the package."""
    blocked = ("import sys; sys.modules['opentelemetry'] = None;"  # `import opentelemetry...` now raises ImportError
               "import server.app, server.__main__ as m;")
    serves = subprocess.run([sys.executable, "-c", blocked + "print('ok')"], capture_output=True, text=True, timeout=60)
    assert serves.returncode == 0 and serves.stdout.strip() == "ok", serves.stderr
    refused = subprocess.run([sys.executable, "-c", blocked + "p = m.get_args_parser();"
                              "m.trace_settings(p, p.parse_args(['--repo', 'r', '--trace-mode', 'opentelemetry']))"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "--trace-mode opentelemetry needs the opentelemetry-proto package" in refused.stderr
