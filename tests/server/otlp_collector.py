"""A stand-in OpenTelemetry collector for the tests: an OTLP/HTTP receiver on a free port that decodes each
ExportTraceServiceRequest with OpenTelemetry's own generated classes (opentelemetry-proto), and answers with the
statuses a test scripts (200 once they run out)."""

import gzip
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse


class Collector:
    def __init__(self):
        self.requests: list[ExportTraceServiceRequest] = []
        self.headers: list[dict] = []
        self.statuses: list[int] = []  # answered in order, then 200
        self.partial_rejections = 0  # a 200 naming this many spans rejected (OTLP's partial success)
        self.lock = threading.Lock()
        self.url = ""

    def spans(self) -> list:
        with self.lock:
            return [s for r in self.requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]

    def resource(self, per_process: bool = False) -> dict:
        """The first export's resource attributes; without `per_process`, less what each process adds (its pid,
        host name and instance id)."""
        with self.lock:
            values = {kv.key: kv.value for kv in self.requests[0].resource_spans[0].resource.attributes}
        return {k: getattr(v, v.WhichOneof("value")) for k, v in values.items()
                if per_process or k not in ("process.pid", "host.name", "service.instance.id")}

    def wait_for_spans(self, n: int, timeout_s: float = 10.0) -> list:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if len(got := self.spans()) >= n:
                return got
            time.sleep(0.02)
        return self.spans()


@contextmanager
def running_collector():
    collector = Collector()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a collector: the exporter reuses its connection

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with collector.lock:
                status = collector.statuses.pop(0) if collector.statuses else 200
                collector.headers.append(dict(self.headers))
                if status == 200:
                    if self.headers.get("Content-Encoding") == "gzip":
                        body = gzip.decompress(body)
                    collector.requests.append(ExportTraceServiceRequest.FromString(body))
            reply = b""
            if status == 200 and collector.partial_rejections:
                response = ExportTraceServiceResponse()
                response.partial_success.rejected_spans = collector.partial_rejections
                response.partial_success.error_message = "too old"
                reply = response.SerializeToString()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            if status == 503:
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    collector.url = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    try:
        yield collector
    finally:
        server.shutdown()
        server.server_close()
