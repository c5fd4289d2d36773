"""An OTLP/HTTP receiver for benchmarks of `--trace-mode opentelemetry`: it decodes every export (protobuf, gzip
or not) with OpenTelemetry's own classes, answers 200, and counts requests, spans and traces (root spans), so that a
run can say how many of its requests' spans arrived. No collector binary is installable here (PyPI has none).

    python -m bench.otlp_sink [--port 4318] [--report FILE]

Runs until SIGTERM or SIGINT, then prints (and writes to --report) one JSON line of its counts.
"""

from __future__ import annotations

import argparse
import gzip
import json
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=4318)
    p.add_argument("--report", help="write the final counts here as JSON")
    args = p.parse_args()
    counts = {"requests": 0, "spans": 0, "traces": 0, "bytes": 0, "undecodable": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                raw = gzip.decompress(body) if self.headers.get("Content-Encoding") == "gzip" else body
                spans = [s for rs in ExportTraceServiceRequest.FromString(raw).resource_spans
                         for ss in rs.scope_spans for s in ss.spans]
                with lock:
                    counts["requests"] += 1
                    counts["bytes"] += len(body)
                    counts["spans"] += len(spans)
                    counts["traces"] += sum(1 for s in spans if s.name == "InferRequest")
                status = 200
            except Exception:  # noqa: BLE001 - counted and answered 400, as a collector would
                with lock:
                    counts["undecodable"] += 1
                status = 400
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    line = json.dumps(counts)
    print(line, flush=True)
    if args.report:
        with open(args.report, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
