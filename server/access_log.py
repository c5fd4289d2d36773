"""The access log (`--access-log PATH|-`): one JSON line per request, every surface, off by default.

Why: metrics say that INVALID_ARGUMENT rose, not which client sends what; the client saw the message, the
operator did not. A line per request names the surface, method, model, peer, status code, images, server time,
the exits and stop reasons of an auxnet.v1 answer, and an error's message. Errors are always written,
successful requests at `--access-log-sample` (a fraction; 1 = all), so a busy server can keep a trace of its
traffic at a cost it chooses.

Why a queue: writing to a file from the event loop would stall every request behind a slow disk. The loop only
puts the record on a queue (a few microseconds); a thread of the logging module writes it. A file rotates at
64 MiB, two old ones kept: a flood of bad requests cannot fill the disk.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import random
import sys
import time

MAX_BYTES = 64 * 2**20
BACKUPS = 2
MAX_MESSAGE = 300  # characters of an error's message kept in a line


class AccessLog:
    def __init__(self, path: str, sample: float = 1.0, seed: int | None = None):
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"access log sample {sample} must be in [0, 1]")
        if path == "-":
            sink: logging.Handler = logging.StreamHandler(sys.stderr)
        else:
            try:
                sink = logging.handlers.RotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8")
            except OSError as e:
                raise ValueError(f"cannot open the access log {path}: {e.strerror}") from e
        sink.setFormatter(logging.Formatter("%(message)s"))
        self.sink = sink
        self.sample = sample
        self.rng = random.Random(seed)
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.listener = logging.handlers.QueueListener(self.queue, sink)
        self.listener.start()
        # A logger of its own, not propagated: access lines never mix with the server's log, nor it with them.
        self.logger = logging.Logger("auxnet.access")
        self.logger.addHandler(logging.handlers.QueueHandler(self.queue))
        self.logger.propagate = False

    def record(self, surface: str, method: str, model: str, code: str, images: int, started: float, peer: str = "",
               message: str | None = None, exits: list[int] | None = None, reasons: list[str] | None = None) -> None:
        """One request's line; `started`: time.monotonic() when its handler began."""
        if code == "OK" and self.sample < 1.0 and self.rng.random() >= self.sample:
            return
        line = {"time": round(time.time(), 3), "surface": surface, "method": method, "model": model[:64], "peer": peer,
                "code": code, "images": images, "ms": round(1000 * (time.monotonic() - started), 3)}
        if exits is not None:
            line["exits"], line["reasons"] = exits, reasons
        if message is not None:
            line["message"] = message[:MAX_MESSAGE]
        self.logger.info(json.dumps(line, separators=(",", ":")))

    def close(self) -> None:
        """Write what is queued and close the file."""
        self.listener.stop()
        self.sink.close()
