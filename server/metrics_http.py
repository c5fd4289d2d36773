"""The /metrics port: prometheus_client's WSGI app on threads, as its start_http_server serves it, but with at most
METRICS_CONNECTIONS connections at a time and a socket timeout on each. prometheus_client's own server starts a
thread per connection with no limit and waits on a silent client forever: 1,100 half-open connections to it held
963 threads and 981 of the server's 1,024 file descriptors (2026-12-01), a few short of taking every port down
(server/connection_limits.py caps the others). Threads, not the event loop, so that /metrics still answers while
the loop is stuck: that is when it is needed most."""

from __future__ import annotations

import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

METRICS_CONNECTIONS = 32  # a scraper or two, and a person with curl
METRICS_TIMEOUT_S = 10.0  # a request (header and all) not received by then is dropped


class _QuietHandler(WSGIRequestHandler):
    timeout = METRICS_TIMEOUT_S  # StreamRequestHandler sets it on the connection's socket

    def log_message(self, *args) -> None:  # one stderr line per scrape otherwise
        pass


class _CappedServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, *args, **kwargs):
        self._slots = threading.BoundedSemaphore(METRICS_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):  # full: close at once, no thread for it
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _CappedServerV6(_CappedServer):
    address_family = socket.AF_INET6


def start_metrics_server(port: int, host: str, registry: CollectorRegistry) -> WSGIServer:
    """Serve `registry` on host:port (0: a free port) from a thread of its own; `.server_port`, `.shutdown()`."""
    server_class = _CappedServerV6 if ":" in host else _CappedServer
    httpd = make_server(host, port, make_wsgi_app(registry), server_class, handler_class=_QuietHandler)
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
    return httpd
