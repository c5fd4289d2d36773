"""What the worker processes of one `--workers` / `--recycle-rss-mb` supervisor agree on: the models loaded in
explicit model control mode, the registered system shared memory regions, and the log and trace settings. A
client's call reaches one worker (the kernel spreads connections over them), so without this each of those calls
changed one process of N, and they were refused under a supervisor.

How: a desired state (state.json in a folder the supervisor makes, `--worker-state`), numbered by generation and
changed under a file lock (read, edit, rename into place). Every worker watches it (poked through a socket of its
own by the worker that changed it; a stat every WATCH_S in case a poke is lost) and converges to it: loads and
unloads models, maps and unmaps regions, applies log and trace settings; then writes the generation it reached,
with what failed there, into its own applied-PID.json. The worker that took the call does its own part first
where that validates the call (a load, a registration: a broken model or a missing object is refused before
anything is shared), changes the state, and answers once every live worker has reached that generation: a load
returns once the model serves on every worker, an unregister once no worker reads the region, as with one
process. A worker joins before it converges at start (a caller then waits for it too) and leaves when it starts
to drain; a restarted or recycled worker starts from the shared state, not from its command line's --model.
What is not shared: a trace file (each worker writes its own, PATH.worker<id>, so trace_file cannot change at run
time here) and poll mode's reloads (each worker polls the repository itself, as before). The traces a trace_count
lets through are counted in a file of their own beside the state, under a lock (server/trace_count.py), since a
count taken per traced request cannot wait for a generation.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from server.errors import NotServing, ServingError

log = logging.getLogger("auxnet.server")
STATE, LOCK = "state.json", "state.lock"
WATCH_S = 0.1  # how soon a worker sees a change if its poke was lost (a stat of one file)
WAIT_POLL_S = 0.005
WAIT_MARGIN_S = 120.0


def empty_state() -> dict:
    # models None: nothing changed yet, every worker serves its command line's models
    return {"generation": 0, "models": None, "shm": {}, "log": None, "trace": None}


class WorkerSync:
    def __init__(self, app, folder: str | Path):
        self.app = app
        self.folder = Path(folder)
        self.pid = os.getpid()
        self.applied = -1  # the generation this worker has converged to
        self._seen = None  # the state file's identity when last read
        self._lock = asyncio.Lock()
        self._joined = False
        self._trace_adopted = None  # the shared trace settings last taken
        self._poked = asyncio.Event()
        self._poke_socket: socket.socket | None = None

    # --- the shared files -----------------------------------------------------------------------------

    def read(self) -> dict:
        try:
            return {**empty_state(), **json.loads((self.folder / STATE).read_text())}
        except FileNotFoundError:
            return empty_state()

    def change(self, edit) -> int:
        """Apply `edit(state)` to the shared state under the lock; returns the new generation. `edit` may raise
        (a ServingError) to refuse the change, and then nothing is written."""
        with open(self.folder / LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.read()
            edit(state)
            state["generation"] += 1
            tmp = self.folder / f"{STATE}.{self.pid}.tmp"
            tmp.write_text(json.dumps(state))
            tmp.replace(self.folder / STATE)  # readers see the old state or the new, never half of one
            return state["generation"]

    def _applied_file(self, pid: int | None = None) -> Path:
        return self.folder / f"applied-{self.pid if pid is None else pid}.json"

    def _write_applied(self, generation: int, failures: dict[str, str]) -> None:
        tmp = self.folder / f"applied-{self.pid}.tmp"
        tmp.write_text(json.dumps({"generation": generation, "failures": failures}))
        tmp.replace(self._applied_file())

    def join(self) -> None:
        """Before converging at start (on the event loop): from now on a caller's change waits for this worker
        too, and pokes it. A poke is a datagram on a socket of this worker's own in the folder: a worker that
        died leaves a socket nobody reads (sending to it fails, harmlessly), where a signal sent to a dead
        worker's pid could reach an unrelated process that reused it."""
        path = self.folder / f"poke-{self.pid}.sock"
        path.unlink(missing_ok=True)
        poke = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            poke.bind(str(path))
        except OSError as e:  # e.g. a socket path past 107 bytes (a long TMPDIR): the stat every WATCH_S remains
            poke.close()
            log.warning("worker %d: no poke socket at %s (%s); shared changes reach it within %g s", self.pid, path,
                        e, WATCH_S)
        else:
            poke.setblocking(False)
            asyncio.get_running_loop().add_reader(poke.fileno(), self._on_poke)
            self._poke_socket = poke
        self._write_applied(-1, {})
        self._joined = True

    def leave(self) -> None:
        """When this worker starts to drain: it takes no new requests, so no change waits for it."""
        if self._joined:
            self._applied_file().unlink(missing_ok=True)
            self._joined = False
        if self._poke_socket is not None:
            asyncio.get_running_loop().remove_reader(self._poke_socket.fileno())
            self._poke_socket.close()
            self._poke_socket = None
            (self.folder / f"poke-{self.pid}.sock").unlink(missing_ok=True)

    def _on_poke(self) -> None:
        try:
            while self._poke_socket is not None and self._poke_socket.recv(16):
                pass
        except (BlockingIOError, OSError):
            pass
        self._poked.set()

    def _poke_others(self) -> None:
        """Tell the other workers to look now rather than at their next WATCH_S."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            for path in self.folder.glob("poke-*.sock"):
                if path.name != f"poke-{self.pid}.sock":
                    try:
                        s.sendto(b"!", str(path))
                    except OSError:  # a dead worker's socket, a full queue (that worker has a poke waiting)
                        pass

    # --- converging -----------------------------------------------------------------------------------

    def _stamp(self):
        try:
            st = os.stat(self.folder / STATE)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    async def converge(self) -> None:
        """Make this worker's models, regions and log settings what the shared state says (once a generation)."""
        async with self._lock:
            await self._converge_locked()

    async def _converge_locked(self) -> None:
        """converge() without taking the lock (its caller holds it)."""
        self._seen = self._stamp()
        state = self.read()
        if state["generation"] <= self.applied:
            return
        failures: dict[str, str] = {}
        if state["models"] is not None:
            await self._converge_models(state["models"], failures)
        self._converge_regions(state["shm"], failures)
        if state["log"] is not None:
            self.app.log_control.adopt(state["log"])
        if state["trace"] is not None and state["trace"] != self._trace_adopted:  # once a change: the local copy of
            self.app.tracer.adopt(state["trace"])  # trace_count must not be reset by other changes (shared: trace_count.py)
            self._trace_adopted = state["trace"]
        self.applied = state["generation"]
        if self._joined:
            self._write_applied(self.applied, failures)
        for key, why in failures.items():
            log.error("worker %d cannot apply the shared %s: %s", self.pid, key.replace(":", " ", 1), why)
            self.app.metrics.shared_change_failures.labels(key.split(":", 1)[0]).inc()

    async def _converge_models(self, wanted: dict[str, str], failures: dict[str, str]) -> None:
        control = self.app.control
        for name in [n for n in self.app.engines if n not in wanted]:
            try:
                await control.unload_here(name)
            except ServingError as e:
                failures[f"model:{name}"] = str(e)
        for name, path in wanted.items():
            engine = self.app.engines.get(name)
            if engine is not None and str(engine.info.path) == path:
                continue
            try:
                await control.load_here(name, Path(path))
            except ServingError as e:
                failures[f"model:{name}"] = str(e)

    def _converge_regions(self, wanted: dict[str, dict], failures: dict[str, str]) -> None:
        shm = self.app.shared_memory
        for name, region in list(shm.regions.items()):
            if wanted.get(name) != {"key": region.key, "offset": region.offset, "byte_size": region.byte_size}:
                shm.unregister(name)
        for name, spec in wanted.items():
            if name not in shm.regions:
                try:
                    shm.register(name, spec["key"], spec["offset"], spec["byte_size"])
                except ServingError as e:
                    failures[f"shm:{name}"] = str(e)

    async def watch(self) -> None:
        """Converge whenever the shared state changes (the app runs this while it serves)."""
        while True:
            try:
                await asyncio.wait_for(self._poked.wait(), WATCH_S)
            except asyncio.TimeoutError:
                pass
            poked = self._poked.is_set()
            self._poked.clear()
            # The stat only saves reading the file when nothing was said: a change within the file system's
            # timestamp granularity, of the same size, on a reused inode would look the same
            if not poked and self._stamp() == self._seen:
                continue
            try:
                await self.converge()
            except Exception:  # noqa: BLE001 - an unreadable state, a failed drain: keep serving as we are, and
                log.exception("cannot apply the workers' shared state %s", self.folder / STATE)  # callers wait
                self._seen = self._stamp()  # for this worker until their timeout, which names it

    # --- a caller's change ----------------------------------------------------------------------------

    async def publish(self, edit, key: str, what: str, first=None) -> None:
        """Share a change, apply it here, and return once every live worker has applied it. `key` names the
        item changed (e.g. "model:NAME"): a worker that could not apply it makes the call fail, naming it.
        `first`: this worker's own part, done before the change is shared (a load, a registration: what fails
        there is refused and nothing is shared), under the same lock as converging, so that another worker's
        older generation cannot undo it here in between (unload the model just loaded, unmap the region).
        It runs to its end if the caller leaves (a client's cancel or closed connection): half a change would
        leave this worker behind the state it shared until the next one."""
        task = asyncio.ensure_future(self._publish(edit, key, what, first))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no "never retrieved" warning
        await asyncio.shield(task)

    async def _publish(self, edit, key: str, what: str, first=None) -> None:
        async with self._lock:
            if first is not None:
                await first()
            generation = self.change(edit)
            self._poke_others()
            await self._converge_locked()
        # Workers converge one generation at a time: one may be draining a model (up to --grace-s) or loading
        # one (seconds; minutes for a TensorRT engine) before it reaches this change.
        failures = await self._wait_all(generation, key, what, self.app.cfg.grace_s + WAIT_MARGIN_S)
        if failures:
            raise NotServing(f"{what} took effect here but not in every worker process: {'; '.join(failures)}; "
                             "the others serve on as they are (repeat the call to try again)")

    def live_workers(self) -> int:
        """How many worker processes have joined and run (this one included): each loads its own copy of a model."""
        return max(1, sum(1 for _ in _live_applied(self.folder)))

    async def _wait_all(self, generation: int, key: str, what: str, timeout_s: float) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while True:
            behind, failures = [], []
            for pid, path in _live_applied(self.folder):
                try:
                    doc = json.loads(path.read_text())
                except FileNotFoundError:  # it left meanwhile
                    continue
                if doc["generation"] < generation:
                    behind.append(pid)
                elif key in doc["failures"]:
                    failures.append(f"worker pid {pid}: {doc['failures'][key]}")
            if not behind:
                return failures
            if time.monotonic() > deadline:
                raise NotServing(f"{what}: worker process(es) {sorted(behind)} had not applied it after {timeout_s:g} s "
                                 "(they apply it when they can; the index on each shows where it stands)")
            await asyncio.sleep(WAIT_POLL_S)


def _live_applied(folder: Path):
    """(pid, its applied-file) of every worker that has joined the folder and still runs."""
    for path in folder.glob("applied-*.json"):
        pid = int(path.stem.split("-", 1)[1])
        if _alive(pid):
            yield pid, path


def _alive(pid: int) -> bool:
    """A process that runs (a dead worker's file stays until the supervisor starts its replacement; a zombie
    not yet reaped is dead too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
