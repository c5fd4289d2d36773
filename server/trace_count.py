"""One trace_count for all the --workers processes (Triton's trace_count: the traces still to collect).

Why: the trace settings are shared by the workers (server/worker_sync.py), but each counted its traces down on its
own, so `trace_count 100` under `--workers 4` let up to 400 traces through. Here the count left lives in one file
per scope (the global settings, or one model's) in the supervisor's worker-state folder: 8 bytes, read and written
under an exclusive lock (fcntl.flock), so a trace is taken from it by one process at a time and never twice.
Only a request already sampled by the rate (tracing.Tracer.sample) takes one, and a worker stops asking once it saw
none left, so the lock is not on the path of ordinary requests.

Who sets a count: the worker that takes a settings call naming trace_count (set or cleared) writes its value; a
scope's first count (start-up, or a model's first settings of its own) is written only if no worker wrote one yet,
so a worker that starts or is replaced later does not give back traces already taken.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
from pathlib import Path

COUNT = struct.Struct("<q")  # the traces left; -1: no limit


class SharedTraceCount:
    """The traces left per scope ("" global, else a model's name), in files under `folder`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._fds: dict[str, int] = {}  # bounded: the global scope and the models with settings of their own

    def path(self, scope: str) -> Path:
        # A model's name may hold any character and be long: its SHA-256 makes a file name that is always valid
        return self.folder / (f"trace-count-model-{hashlib.sha256(scope.encode()).hexdigest()}" if scope else "trace-count-global")

    def start(self, scope: str, count: int) -> None:
        """The scope's first count: written only if no worker has written one (a later worker keeps what is left)."""
        self._change(scope, lambda left: count if left is None else left)

    def set(self, scope: str, count: int) -> None:
        """A settings call named trace_count: this is what is left now, for every worker."""
        self._change(scope, lambda left: count)

    def take(self, scope: str) -> int | None:
        """Take one trace: the count left after it, or None if none was left (-1, no limit, stays -1)."""
        before, after = self._change(scope, lambda left: left - 1 if left is not None and left > 0 else left)
        return None if before is None or before == 0 else after

    def left(self, scope: str) -> int | None:
        """The count left, or None if this scope has none written."""
        return self._change(scope, lambda left: left)[1]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _change(self, scope: str, change) -> tuple[int | None, int | None]:
        """Read the scope's count, write change(count) if it differs, under the file's lock; returns both."""
        fd = self._fds.get(scope)
        if fd is None:
            fd = self._fds[scope] = os.open(self.path(scope), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            raw = os.pread(fd, COUNT.size, 0)
            left = COUNT.unpack(raw)[0] if len(raw) == COUNT.size else None  # None: created just now, never written
            new = change(left)
            if new is not None and new != left:
                os.pwrite(fd, COUNT.pack(new), 0)
            return left, new
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
