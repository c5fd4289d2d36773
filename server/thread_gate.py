"""The segment threads handed out in priority order (used with --priority-levels > 1).

Every exit has a worker that submits its next batch to the segment threads' executor, whose queue is first come,
first served: under load each exit's batch waits behind the batches the other exits submitted before it, so a
high-priority request at the head of exit 0's queue still waited for up to one batch of every other exit
(bench/priority.py measured its server p50 equal to the flood's). With the gate, an exit's worker waits for a
thread before it takes its batch, and a freed thread goes to the waiting exit whose queue holds the best request
at that moment (priority level, then earliest deadline), so a request that arrives while its exit waits still
rides in that exit's next batch.
"""

from __future__ import annotations

import asyncio

from server.jobs import ExitQueue

NOTHING_QUEUED = (float("inf"), float("inf"))


def head_key(q: ExitQueue) -> tuple:
    """(priority level, deadline key) of the request this queue would serve first."""
    return q.heap[0][:2] if q.heap else NOTHING_QUEUED


class ThreadGate:
    def __init__(self, threads: int):
        self.free = threads
        self.waiting: list[tuple[ExitQueue, asyncio.Future]] = []

    async def acquire(self, q: ExitQueue) -> None:
        if self.free > 0 and not self.waiting:
            self.free -= 1
            return
        granted = asyncio.get_running_loop().create_future()
        self.waiting.append((q, granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release()  # granted in the same instant it was cancelled: pass the thread on
            else:
                self.waiting.remove((q, granted))
            raise

    def release(self) -> None:
        """A thread is free again: to the waiting exit whose best request comes first, else back to the pool."""
        if not self.waiting:
            self.free += 1
            return
        best = min(range(len(self.waiting)), key=lambda i: head_key(self.waiting[i][0]))
        _, granted = self.waiting.pop(best)
        granted.set_result(None)
