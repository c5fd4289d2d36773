"""One trace file, written as Triton writes it: a JSON array of trace objects; with log_frequency N, each N
requests' traces to FILE.0, FILE.1, ...; with 0, everything to FILE when tracing of it ends (shutdown, or a
settings change that leaves it).

Why a thread: a file of a thousand traces is ~1 MB of JSON; serialising and writing it on the event loop would
stall every request in flight. The loop hands the list over and goes on. Each file is written to a temporary
name and renamed, so a reader never sees half an array. With log_frequency 0 at most MAX_HELD requests' traces
are held (memory is bounded whatever the settings); beyond that they are dropped, counted and logged once:
set log_frequency to trace longer.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger("auxnet.server")

MAX_HELD = 10_000  # requests' traces held for a log_frequency-0 file (~1 KB each with five exits)
_writer: ThreadPoolExecutor | None = None  # one thread for every trace file: writes keep their order


def _executor() -> ThreadPoolExecutor:
    global _writer
    if _writer is None:
        _writer = ThreadPoolExecutor(1, thread_name_prefix="trace-writer")
    return _writer


class TraceFile:
    def __init__(self, path: str, log_frequency: int, index: int = 0):
        self.path, self.log_frequency = path, log_frequency
        # The JSON text of each request's trace objects not written yet: strings, which the garbage collector never
        # walks (held dicts made every collection slower: 97 us per traced request, measured).
        self.held: list[str] = []
        self.requests = 0  # requests whose traces are in `held`
        self.index = index  # the next FILE.<index> (log_frequency > 0)
        self.dropped = 0
        self.pending: list[Future] = []

    def add(self, text: str) -> None:
        """One request's trace objects as JSON text, comma-separated (on the event loop)."""
        if self.log_frequency == 0 and self.requests >= MAX_HELD:
            if not self.dropped:
                log.warning("trace file %s: %d requests' traces held, the most kept until shutdown; later ones are "
                            "dropped (set log_frequency to write every N traces)", self.path, MAX_HELD)
            self.dropped += 1
            return
        self.held.append(text)
        self.requests += 1
        if self.log_frequency and self.requests >= self.log_frequency:
            self._write_held()

    def _write_held(self) -> None:
        if not self.held:
            return
        path = self.path if self.log_frequency == 0 else f"{self.path}.{self.index}"
        self.index += 1
        texts, self.held, self.requests = self.held, [], 0
        self.pending = [f for f in self.pending if not f.done()]
        self.pending.append(_executor().submit(_write, path, texts))

    def close(self, wait: bool = True) -> None:
        """Write what is held; with `wait`, until every write of this file is done (shutdown)."""
        self._write_held()
        if self.dropped:
            log.warning("trace file %s: %d requests' traces were dropped beyond the %d held", self.path, self.dropped, MAX_HELD)
        if wait:
            for f in self.pending:
                f.result()


def _write(path: str, texts: list[str]) -> None:
    """In the writer thread: the whole array to a temporary name, then renamed (atomic on POSIX)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:  # piece by piece: no second copy of a file's worth of text
            f.write("[")
            f.writelines(t if i == 0 else "," + t for i, t in enumerate(texts))
            f.write("]")
        os.replace(tmp, path)
    except OSError as e:
        log.error("trace file %s not written (%d requests' traces lost): %s", path, len(texts), e)
        try:
            os.unlink(tmp)
        except OSError:
            pass
