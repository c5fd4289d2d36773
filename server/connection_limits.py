"""Connections an attacker cannot use to take the server down: a cap per port, idle connections closed, and the
process's open-file limit raised to what the system allows.

Measured before (2026-12-01, a later session): 1,100 TCP connections to the HTTP port, each sending half a request
header and nothing more, with the server at an open-file limit of 1,024: every file descriptor in use, new gRPC
connections failed (UNAVAILABLE, for every client), asyncio logged 13,000-17,000 ERROR lines in ten seconds, and
the connections stayed open as long as the attacker kept them. Each port now has its own cap, so that a flood of
one cannot take the descriptors the other needs, and a connection that carries no request for `idle_timeout_s` is
closed, so that holding one costs the attacker something. gRPC does this in its core (`grpc_options`); the HTTP
side here (`LimitedSite`, `ConnectionGuard`).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass

from aiohttp import web

log = logging.getLogger("auxnet.server")
RESERVED_FILES = 128  # model files, logs, the metrics and health ports, pipes: never given to connections
DEFAULT_MAX_CONNECTIONS = 4096  # per port; what one replica behind a load balancer needs, many times over
HANDSHAKE_TIMEOUT_S = 10.0  # a gRPC connection that has not finished its HTTP/2 (and TLS) handshake by then


def raise_open_file_limit() -> int:
    """Lift the soft open-file limit to the hard one (often 1,024 against 524,288 or more: the soft limit is a
    default for old programs, not a policy) and return it, as Go's runtime does for every program since 1.19."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:  # a container may refuse: keep the soft limit, and say so
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, e)
    return soft


def per_port_cap(requested: int, open_files: int, ports: int) -> int:
    """Connections each of `ports` listening ports may hold: `requested` (0: the default), but never so many that
    the ports together could use up the open files the process needs for everything else."""
    room = max(1, (open_files - RESERVED_FILES) // max(1, ports))
    want = requested or DEFAULT_MAX_CONNECTIONS
    if requested and want > room:
        log.warning("--max-connections %d per port does not fit the open-file limit %d (%d ports): %d each", want,
                    open_files, ports, room)
    return min(want, room)


def grpc_options(max_connections: int, idle_timeout_s: float, max_streams: int = 0) -> list[tuple[str, int]]:
    """gRPC core's own: refused before its handshake past the cap; closed (GOAWAY) when no RPC ran for the idle
    time; dropped when the handshake is not done in HANDSHAKE_TIMEOUT_S (gRPC's default waits 120 s). `max_streams`
    (0: gRPC's default, no limit): HTTP/2 streams one connection may hold; with gRPC core's overload protection (on
    by default) a stream counts until the server has let it go, not until the client resets it, which bounds what
    one connection's HTTP/2 Rapid Reset (CVE-2023-44487) can start (RESULTS §55)."""
    opts = [("grpc.max_allowed_incoming_connections", max_connections),
            ("grpc.server_handshake_timeout_ms", int(1000 * HANDSHAKE_TIMEOUT_S))]
    if max_streams > 0:
        opts.append(("grpc.max_concurrent_streams", max_streams))
    if idle_timeout_s > 0:
        opts.append(("grpc.max_connection_idle_ms", int(1000 * idle_timeout_s)))
    return opts


@dataclass
class _Connection:
    last_active: float  # when it opened, or its last request started or ended
    in_progress: int = 0  # requests being answered on it


class ConnectionGuard:
    """The HTTP port's connections: at most `cap` open (one more is closed as soon as it is accepted, before any of
    its bytes are read), and one with no request in progress for `idle_timeout_s` is closed: an idle keep-alive
    connection, and one that sends a request's header too slowly to finish it (slowloris). A request's body has
    its own timeout (server/v2/http.py)."""

    def __init__(self, cap: int, idle_timeout_s: float, on_refused=lambda: None, on_count=lambda n: None,
                 on_idle_closed=lambda: None):
        self.cap, self.idle_timeout_s = cap, idle_timeout_s
        self.on_refused, self.on_count, self.on_idle_closed = on_refused, on_count, on_idle_closed
        self.open: dict[asyncio.BaseTransport, _Connection] = {}
        self._sweeper: asyncio.Task | None = None

    def factory(self, make_protocol):
        """A protocol factory for loop.create_server that wraps `make_protocol`'s protocols."""
        return lambda: _Guarded(self, make_protocol())

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        if len(self.open) >= self.cap:
            transport.abort()  # no FIN handshake to wait for: the descriptor is free at once
            self.on_refused()
            return False
        self.open[transport] = _Connection(time.monotonic())
        self.on_count(len(self.open))
        return True

    def closed(self, transport: asyncio.BaseTransport) -> None:
        if self.open.pop(transport, None) is not None:
            self.on_count(len(self.open))

    def request_started(self, transport) -> None:
        c = self.open.get(transport)
        if c is not None:
            c.in_progress += 1
            c.last_active = time.monotonic()

    def request_ended(self, transport) -> None:
        c = self.open.get(transport)
        if c is not None:
            c.in_progress -= 1
            c.last_active = time.monotonic()

    def sweep(self, now: float) -> int:
        """Close every connection idle for idle_timeout_s; return how many."""
        idle = [t for t, c in self.open.items() if c.in_progress == 0 and now - c.last_active >= self.idle_timeout_s]
        for t in idle:
            t.close()
            self.on_idle_closed()
        return len(idle)

    def start(self) -> None:
        if self.idle_timeout_s > 0:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="http-idle-connections")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)

    async def _sweep_forever(self) -> None:
        every = min(1.0, self.idle_timeout_s / 4)
        while True:
            await asyncio.sleep(every)
            self.sweep(time.monotonic())

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        self.request_started(request.transport)
        try:
            return await handler(request)
        finally:
            self.request_ended(request.transport)


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the guard: the connection is counted (or refused) before
    aiohttp sees it, and uncounted when it ends."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol):
        self.guard, self.inner, self.transport, self.admitted = guard, inner, None, False

    def connection_made(self, transport):
        self.transport = transport
        self.admitted = self.guard.admit(transport)
        if self.admitted:
            self.inner.connection_made(transport)

    def connection_lost(self, exc):
        if self.admitted:
            self.guard.closed(self.transport)
            self.inner.connection_lost(exc)

    def data_received(self, data):
        if self.admitted:
            self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received() if self.admitted else None

    def pause_writing(self):
        if self.admitted:
            self.inner.pause_writing()

    def resume_writing(self):
        if self.admitted:
            self.inner.resume_writing()


class LimitedSite(web.TCPSite):
    """aiohttp's TCPSite with every connection's protocol behind a ConnectionGuard (the same start, the factory
    wrapped: aiohttp offers no hook for this)."""

    def __init__(self, runner: web.BaseRunner, guard: ConnectionGuard, *args, **kwargs):
        super().__init__(runner, *args, **kwargs)
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.guard.factory(self._runner.server), self._host, self._port, ssl=self._ssl_context,
            backlog=self._backlog, reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port
