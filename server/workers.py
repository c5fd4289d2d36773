"""`python -m server --workers N`: N server processes on one port, for hosts with more cores than one
Python process can use (or one GPU fed by several processes). Issue 12.

The supervisor (this process) picks the ports, starts N ordinary `python -m server` processes that all bind
the gRPC port (and the health and HTTP ports) with SO_REUSEPORT, so the kernel spreads connections over them, and
serves /metrics itself: every worker writes its metrics to a shared PROMETHEUS_MULTIPROC_DIR and the
supervisor adds them up; explicit model control, shared memory regions and log settings are shared through a
folder of its own (server/worker_sync.py). SIGTERM/SIGINT are passed on to every worker, each drains as a single server does
(health NOT_SERVING, admitted requests answered), and the supervisor exits 0 once all have. A worker that
dies otherwise is started again, at once the first time and then after a doubling delay while it keeps dying
young (class CrashBackoff: a broken repository or a crash at start must not become a hot loop). Each worker
watches the repository for new versions itself.

With --recycle-rss-mb (which runs a supervisor even for one worker), a worker whose resident memory passes the
limit is replaced in place (class Recycling): a guard against native leaks we cannot fix (RESULTS §31).
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
                access_log: str | None = None, trace_file: str | None = None, shared: Path | None = None) -> list[str]:
    """The supervisor's own arguments with what each worker must do differently appended (argparse keeps the
    last value of a repeated option). `access_log`, `trace_file`: this worker's own files (rotation by several
    processes of one file would lose lines; trace files are rewritten whole)."""
    own_log = ["--access-log", access_log] if access_log else []
    own_log += ["--trace-file", trace_file] if trace_file else []
    own_log += ["--worker-state", str(shared)] if shared else []  # models, regions, log settings (server/worker_sync.py)
    return [sys.executable, "-m", "server", *argv, "--workers", "1", "--recycle-rss-mb", "0", "--reuse-port", "--port", str(port),
            "--metrics-port", "-1", "--health-port", str(-1 if health_port is None else health_port),
            "--http-port", str(-1 if http_port is None else http_port), "--port-file", str(port_file), *own_log]


def resident_mb(pid: int) -> float | None:
    """A process's resident memory (MB) from /proc, or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def supervise(args, argv: list[str]) -> int:
    from prometheus_client import CollectorRegistry, Counter, Gauge, multiprocess

    from server.host_metrics import register_process_metrics
    from server.metrics_http import start_metrics_server

    host = args.host
    port = args.port or free_port(host)
    health_port = None if args.health_port < 0 else (args.health_port or free_port(host))
    http_port = None if args.http_port < 0 else (args.http_port or free_port(host))
    state = Path(tempfile.mkdtemp(prefix="auxnet-workers-"))
    metrics_dir = state / "metrics"
    metrics_dir.mkdir()
    shared_dir = state / "shared"
    shared_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    stopping = False
    # A worker's id names its port file and access log (PATH.<id>). A slot keeps its id when its worker is
    # restarted after dying, but a recycled worker's replacement gets a new one: both run while the old drains.
    ids = list(range(args.workers))
    next_id = args.workers

    def spawn(wid: int) -> subprocess.Popen:
        port_file = state / f"worker-{wid}.ports"
        port_file.unlink(missing_ok=True)
        log_file = f"{args.access_log}.{wid}" if args.access_log and args.access_log != "-" else None  # PATH.0, PATH.1, ...
        trace_file = f"{args.trace_file}.worker{wid}" if args.trace_file else None  # its FILE.<i> then FILE.worker<id>.<i>
        return subprocess.Popen(worker_argv(argv, port, health_port, http_port, port_file, log_file, trace_file, shared_dir),
                                env=env)

    def is_ready(wid: int) -> bool:
        port_file = state / f"worker-{wid}.ports"
        return port_file.exists() and bool(port_file.read_text().strip())

    def wait_ready(wid: int, proc: subprocess.Popen) -> bool:
        deadline = time.time() + START_TIMEOUT_S
        while not is_ready(wid):
            if proc.poll() is not None or time.time() > deadline:
                return False
            time.sleep(0.05)
        return True

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True
        for p in [*procs, *retiring, *([recycling.new] if recycling else [])]:
            if p is not None and p.poll() is None:  # None: a worker already stopped (a second signal)
                p.send_signal(signum)

    def write_port_file() -> None:  # renamed into place: a reader never sees half a line
        if args.port_file:
            tmp = Path(f"{args.port_file}.tmp")
            tmp.write_text(f"{port} {metrics_port} {health_port or 0} {http_port or 0} "
                           f"{' '.join(str(p.pid) for p in procs if p is not None)}\n")
            tmp.replace(args.port_file)

    procs: list[subprocess.Popen | None] = []
    retiring: list[subprocess.Popen] = []  # recycled workers still draining (or a replacement that failed)
    recycling: Recycling | None = None
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    procs.extend(spawn(i) for i in ids)
    for i, p in enumerate(procs):
        if not wait_ready(i, p):
            log.error("refusing to start: worker %d did not start (exit code %s)", i, p.poll())
            on_signal(signal.SIGTERM, None)
            for q in procs:
                q.wait(args.grace_s + 5)
            shutil.rmtree(state, ignore_errors=True)
            return 2
    started = [time.monotonic()] * len(procs)
    restart_at: list[float | None] = [None] * len(procs)  # a dead worker's slot, empty until then
    backoff = CrashBackoff(len(procs))
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))
    recycles = Counter("auxnet_worker_recycles", "Workers replaced for passing --recycle-rss-mb", registry=registry)
    resident = Gauge("auxnet_worker_resident_bytes", "Resident memory of each worker slot, read by the supervisor",
                     ["slot"], registry=registry)
    http = None
    if args.metrics_port >= 0:
        # the host's figures once, from here (a worker's would be summed); process_* are the supervisor's own
        register_process_metrics(registry, cpu=args.allow_cpu_metrics, gpu=args.allow_gpu_metrics)
        http = start_metrics_server(args.metrics_port, host, registry)
    metrics_port = http.server_port if http else 0
    write_port_file()
    log.info("%d workers serving on %s:%d (metrics on %s)", len(procs), host, port,
             f"http://{host}:{metrics_port}/metrics" if http else "none")
    code = 0
    last_rss_check = 0.0
    while procs:
        time.sleep(0.2)
        for i, p in enumerate(procs):
            if p is None or p.poll() is None:
                continue
            multiprocess.mark_process_dead(p.pid, str(metrics_dir))
            procs[i] = None
            if stopping:
                code = code or stop_exit_code(p.returncode)
            else:
                delay = backoff.delay(i, time.monotonic() - started[i])
                log.error("worker %d (pid %d) exited with code %s; starting it again%s", i, p.pid, p.returncode,
                          f" in {delay:g} s (it died young {backoff.young[i]} times in a row)" if delay else "")
                restart_at[i] = time.monotonic() + delay
                write_port_file()
        for i in [i for i, at in enumerate(restart_at) if at is not None and time.monotonic() >= at]:
            restart_at[i] = None
            if not stopping:
                procs[i] = spawn(ids[i])
                wait_ready(ids[i], procs[i])
                started[i] = time.monotonic()
                write_port_file()
        for p in [p for p in retiring if p.poll() is not None]:
            multiprocess.mark_process_dead(p.pid, str(metrics_dir))
            retiring.remove(p)
            returncode = stop_exit_code(p.returncode) if stopping else p.returncode
            (log.info if returncode == 0 else log.error)("retired worker (pid %d) exited with code %s", p.pid, p.returncode)
            code = code or (returncode if stopping else 0)
        if recycling is not None:
            recycling, retired, swapped = recycling.advance(procs, started, ids, is_ready, stopping)
            retiring.extend([retired] if retired is not None else [])
            if swapped:
                recycles.inc()
                write_port_file()
        if time.monotonic() - last_rss_check >= RSS_CHECK_S:
            last_rss_check = time.monotonic()
            for i, p in enumerate(procs):
                rss = None if p is None else resident_mb(p.pid)
                if rss is None:
                    continue
                resident.labels(slot=str(i)).set(rss * 2**20)
                if (args.recycle_rss_mb and recycling is None and not stopping and rss > args.recycle_rss_mb
                        and time.monotonic() - started[i] >= args.recycle_min_age_s):
                    log.warning("worker %d (pid %d) holds %.0f MB resident, over --recycle-rss-mb %g: starting its "
                                "replacement; it drains once that one serves", i, p.pid, rss, args.recycle_rss_mb)
                    recycling = Recycling(i, p, next_id, spawn(next_id), time.monotonic())
                    next_id += 1
        if stopping and all(p is None for p in procs) and not retiring and recycling is None:
            # a slot waiting out its back-off is not restarted once stopping
            break
    if http is not None:
        http.shutdown()
        http.server_close()
    shutil.rmtree(state, ignore_errors=True)
    log.info("all workers stopped")
    return code


RSS_CHECK_S = 1.0


class CrashBackoff:
    """How long a dead worker's slot stays empty before it is started again. The first death is restarted at
    once (a crash that happens once is best answered by a fresh worker now); each further death of a worker
    that ran less than STABLE_S doubles the wait, from FIRST_S up to MAX_S, as Kubernetes' CrashLoopBackOff
    does: a repository broken under a running server, or a crash at start-up, then costs a start every 30 s
    instead of a hot loop of starts that takes the host's cores and floods the log. A worker that ran
    STABLE_S or longer starts the count again."""

    FIRST_S, MAX_S, STABLE_S = 1.0, 30.0, 60.0

    def __init__(self, slots: int):
        self.young = [0] * slots  # deaths in a row of workers younger than STABLE_S, per slot

    def delay(self, slot: int, ran_s: float) -> float:
        self.young[slot] = self.young[slot] + 1 if ran_s < self.STABLE_S else 1
        if self.young[slot] == 1:
            return 0.0
        return min(self.MAX_S, self.FIRST_S * 2 ** (self.young[slot] - 2))
HANDOFF_SIGNAL = signal.SIGUSR1  # a worker told so closes its ports first and then drains (ServerApp.shutdown)


class Recycling:
    """One worker being replaced: its replacement starts while it serves on (both share the port), and once the
    replacement serves it is told to hand off (HANDOFF_SIGNAL): it closes its ports, so that clients move to the
    replacement, and answers what it holds. One at a time, so capacity never drops by more than one worker."""

    def __init__(self, slot: int, old: subprocess.Popen, new_id: int, new: subprocess.Popen, since: float):
        self.slot, self.old, self.new_id, self.new, self.since = slot, old, new_id, new, since

    def advance(self, procs, started, ids, is_ready, stopping) -> tuple[Recycling | None, subprocess.Popen | None, bool]:
        """(what is still in progress, a worker told to stop that must be waited for, whether the slot changed)."""
        if stopping:  # the stop was passed on to the replacement too; the old one is in procs and drains there
            return None, self.new, False
        failed = self.new.poll() is not None or time.monotonic() - self.since > START_TIMEOUT_S
        if failed:
            log.error("the replacement of worker %d did not start (exit code %s); worker %d serves on and is "
                      "tried again after --recycle-min-age-s", self.slot, self.new.poll(), self.slot)
            if self.new.poll() is None:
                self.new.kill()
            started[self.slot] = time.monotonic()
            return None, self.new, False
        if not is_ready(self.new_id):
            return self, None, False
        if procs[self.slot] is not self.old:  # the old one died meanwhile and was restarted: keep that one
            self.new.send_signal(signal.SIGTERM)
            return None, self.new, False
        procs[self.slot], ids[self.slot], started[self.slot] = self.new, self.new_id, time.monotonic()
        self.old.send_signal(HANDOFF_SIGNAL)
        log.info("worker %d: pid %d serves; pid %d drains", self.slot, self.new.pid, self.old.pid)
        return None, self.old, True
