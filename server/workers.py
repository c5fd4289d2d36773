"""`python -m server --workers N`: N server processes on one port, for hosts with more cores than one
Python process can use (or one GPU fed by several processes). Issue 12.

The supervisor (this process) picks the ports, starts N ordinary `python -m server` processes that all bind
the gRPC port (and the health and HTTP ports) with SO_REUSEPORT, so the kernel spreads connections over them, and
serves /metrics itself: every worker writes its metrics to a shared PROMETHEUS_MULTIPROC_DIR and the
supervisor adds them up. SIGTERM/SIGINT are passed on to every worker, each drains as a single server does
(health NOT_SERVING, admitted requests answered), and the supervisor exits 0 once all have. A worker that
dies otherwise is started again. Each worker watches the repository for new versions itself.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("auxnet.server")
START_TIMEOUT_S = 120


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def stop_exit_code(returncode: int) -> int:
    """A worker's exit code once the supervisor has passed a stop on. A worker that serves handles SIGTERM and
    SIGINT itself (drains, exits 0), so death by one of them means the stop reached it before its handlers were
    installed, while it still started (e.g. a replacement still importing): nothing was admitted, nothing lost."""
    return 0 if returncode in (-signal.SIGTERM, -signal.SIGINT) else returncode


def worker_argv(argv: list[str], port: int, health_port: int | None, http_port: int | None, port_file: Path,
                access_log: str | None = None) -> list[str]:
    """The supervisor's own arguments with what each worker must do differently appended (argparse keeps the
    last value of a repeated option). `access_log`: this worker's own file (rotation by several processes
    of one file would lose lines)."""
    own_log = ["--access-log", access_log] if access_log else []
    return [sys.executable, "-m", "server", *argv, "--workers", "1", "--reuse-port", "--port", str(port),
            "--metrics-port", "-1", "--health-port", str(-1 if health_port is None else health_port),
            "--http-port", str(-1 if http_port is None else http_port), "--port-file", str(port_file), *own_log]


def supervise(args, argv: list[str]) -> int:
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    host = args.host
    port = args.port or free_port(host)
    health_port = None if args.health_port < 0 else (args.health_port or free_port(host))
    http_port = None if args.http_port < 0 else (args.http_port or free_port(host))
    state = Path(tempfile.mkdtemp(prefix="auxnet-workers-"))
    metrics_dir = state / "metrics"
    metrics_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    stopping = False

    def spawn(i: int) -> subprocess.Popen:
        port_file = state / f"worker-{i}.ports"
        port_file.unlink(missing_ok=True)
        log_file = f"{args.access_log}.{i}" if args.access_log and args.access_log != "-" else None  # PATH.0, PATH.1, ...
        return subprocess.Popen(worker_argv(argv, port, health_port, http_port, port_file, log_file), env=env)

    def wait_ready(i: int, proc: subprocess.Popen) -> bool:
        deadline = time.time() + START_TIMEOUT_S
        port_file = state / f"worker-{i}.ports"
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.time() > deadline:
                return False
            time.sleep(0.05)
        return True

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True
        for p in procs:
            if p is not None and p.poll() is None:  # None: a worker already stopped (a second signal)
                p.send_signal(signum)

    procs: list[subprocess.Popen] = []
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    procs.extend(spawn(i) for i in range(args.workers))
    for i, p in enumerate(procs):
        if not wait_ready(i, p):
            log.error("refusing to start: worker %d did not start (exit code %s)", i, p.poll())
            on_signal(signal.SIGTERM, None)
            for q in procs:
                q.wait(args.grace_s + 5)
            shutil.rmtree(state, ignore_errors=True)
            return 2
    http = None
    if args.metrics_port >= 0:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))
        http, _ = start_http_server(args.metrics_port, host, registry=registry)
    metrics_port = http.server_port if http else 0
    if args.port_file:
        Path(args.port_file).write_text(f"{port} {metrics_port} {health_port or 0} {http_port or 0} "
                                        f"{' '.join(str(p.pid) for p in procs)}\n")
    log.info("%d workers serving on %s:%d (metrics on %s)", len(procs), host, port,
             f"http://{host}:{metrics_port}/metrics" if http else "none")
    code = 0
    while procs:
        time.sleep(0.2)
        for i, p in enumerate(procs):
            if p is None or p.poll() is None:
                continue
            multiprocess.mark_process_dead(p.pid, str(metrics_dir))
            if stopping:
                code = code or stop_exit_code(p.returncode)
                procs[i] = None
            else:
                log.error("worker %d (pid %d) exited with code %s; starting it again", i, p.pid, p.returncode)
                procs[i] = spawn(i)
                wait_ready(i, procs[i])
        if stopping and all(p is None for p in procs):
            break
    if http is not None:
        http.shutdown()
        http.server_close()
    shutil.rmtree(state, ignore_errors=True)
    log.info("all workers stopped")
    return code
