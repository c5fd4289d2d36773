"""At most one log line per interval for events that can come by the thousand (hostile or merely common traffic),
each line saying how many went unmentioned since the last: server/handlers.py's corrupt messages,
server/grpc_log.py's failed batches."""

from __future__ import annotations

import time
from collections.abc import Callable

LOG_EVERY_S = 60.0


class LogLimit:
    def __init__(self, every_s: float = LOG_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.every_s, self.clock = every_s, clock
        self.last_logged = float("-inf")
        self.unlogged = 0

    def due(self) -> str | None:
        """Called once per event: None if this one goes unmentioned, else the suffix for its log line ("" or
        " (N more since the last such warning)")."""
        now = self.clock()
        if now - self.last_logged < self.every_s:
            self.unlogged += 1
            return None
        also = f" ({self.unlogged} more since the last such warning)" if self.unlogged else ""
        self.last_logged, self.unlogged = now, 0
        return also
