"""The access log (`--access-log PATH|-`): one JSON line per request, every surface, off by default.

Why: metrics say that INVALID_ARGUMENT rose, not which client sends what; the client saw the message, the
operator did not. A line per request names the surface, method, model, peer, status code, images, server time,
the exits and stop reasons of its answers, and an error's message. Errors are always written,
successful requests at `--access-log-sample` (a fraction; 1 = all), so a busy server can keep a trace of its
traffic at a cost it chooses.

Why a buffer and a thread: writing from the event loop would stall every request behind a slow disk, and
Python's logging module (a record, a queue handler, a flush per line) cost 0.28 ms of server CPU per request
when measured here (RESULTS §12), a third of all the server's own work. So the loop only formats its line and
appends it to a deque; a thread takes what is there every FLUSH_S and writes it in one call. A file rotates at 64 MiB,
two old ones kept (a flood of bad requests cannot fill the disk); if the disk stalls, lines beyond MAX_PENDING
are dropped and counted rather than held in memory.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import threading
import time
from collections import deque

MAX_BYTES = 64 * 2**20
BACKUPS = 2
MAX_MESSAGE = 300  # characters of an error's message kept in a line
MAX_ID, MAX_IDS = 128, 64  # characters of a client's request id kept, ids of a batch kept: a client sets their size
FLUSH_S = 0.2  # how often the writer thread writes what requests left
MAX_PENDING = 100_000  # lines waiting for a stalled disk before new ones are dropped (and counted)


class AccessLog:
    def __init__(self, path: str, sample: float = 1.0, seed: int | None = None):
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"access log sample {sample} must be in [0, 1]")
        self.path = path
        try:
            self.file = sys.stderr if path == "-" else open(path, "a", encoding="utf-8")
        except OSError as e:
            raise ValueError(f"cannot open the access log {path}: {e.strerror}") from e
        self.sample = sample
        self.rng = random.Random(seed)
        self.pending: deque[str] = deque()  # append and popleft are atomic: no lock between loop and writer
        # Lines dropped since the start, and how many of them the log has reported: each has one writer (record()
        # on the event loop; the writer thread), so no increment is lost between a read and a reset.
        self.dropped = 0
        self._dropped_reported = 0
        self.stopping = threading.Event()
        self.writer = threading.Thread(target=self._write_loop, name="access-log", daemon=True)
        self.writer.start()

    def record(self, surface: str, method: str, model: str, code: str, images: int, started: float, peer: str = "",
               message: str | None = None, exits: list[int] | None = None, reasons: list[str] | None = None,
               request_id: str | list[str] | None = None) -> None:
        """One request's line; `started`: time.monotonic() when its handler began. On the event loop: no I/O.
        `request_id`: what the client sent to find its request again (a ClassifyBatch: one per item)."""
        if code == "OK" and self.sample < 1.0 and self.rng.random() >= self.sample:
            return
        if len(self.pending) >= MAX_PENDING:
            self.dropped += 1
            return
        line = {"time": round(time.time(), 3), "surface": surface, "method": method, "model": model[:64], "peer": peer,
                "code": code, "images": images, "ms": round(1000 * (time.monotonic() - started), 3)}
        if request_id and any(request_id):
            line["id"] = request_id[:MAX_ID] if isinstance(request_id, str) else [i[:MAX_ID] for i in request_id[:MAX_IDS]]
        if exits is not None:
            line["exits"], line["reasons"] = exits, reasons
        if message is not None:
            line["message"] = message[:MAX_MESSAGE]
        self.pending.append(json.dumps(line, separators=(",", ":")) + "\n")

    def _write_loop(self) -> None:
        while not self.stopping.wait(FLUSH_S):
            self._flush()
        self._flush()

    def _flush(self) -> None:
        lines = [self.pending.popleft() for _ in range(len(self.pending))]
        dropped = self.dropped - self._dropped_reported
        self._dropped_reported += dropped
        if dropped:
            lines.append(json.dumps({"time": round(time.time(), 3), "dropped_lines": dropped}) + "\n")
        if not lines:
            return
        try:
            self.file.write("".join(lines))
            self.file.flush()
            if self.file is not sys.stderr and self.file.tell() >= MAX_BYTES:
                self._rotate()
        except OSError as e:  # a full or failed disk must not stop serving: say so once per flush, go on
            logging.getLogger("auxnet.server").error("access log %s: %s; %d lines lost", self.path, e, len(lines))

    def _rotate(self) -> None:
        self.file.close()
        for i in range(BACKUPS, 0, -1):
            older = f"{self.path}.{i - 1}" if i > 1 else self.path
            if os.path.exists(older):
                os.replace(older, f"{self.path}.{i}")
        self.file = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        """Write what is pending and close the file."""
        self.stopping.set()
        self.writer.join(10)
        if self.file is not sys.stderr:
            self.file.close()
