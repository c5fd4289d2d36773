"""What the engine (server/engine.py) moves between its exits: a request waiting at an exit (Job), one segment
run of a batch as a pool thread decided it (Step), an exit's queue, and the answer a request gets."""

from __future__ import annotations

import asyncio
import heapq
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from server.tracing import Trace


def calibrated(logits: np.ndarray, temperature: float) -> np.ndarray:
    """(B, classes) logits -> temperature-scaled class probabilities."""
    z = logits / temperature
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


@dataclass
class Job:
    x: np.ndarray  # input of the next segment, one sample
    arrival: float  # time.monotonic() at arrival
    budget_end: float | None  # arrival + budget_ms
    deadline: float | None  # the gRPC deadline (hard)
    min_confidence: float | None
    max_exit: int
    future: asyncio.Future
    use_policy: bool = False  # thresholds from the model's calibrated policy instead of min_confidence
    seq: int = 0
    drop_reason: str = "cancelled"  # why a job whose caller left is dropped: "cancelled" or "deadline"
    predicted_finish: float | None = None  # when it went on with a budget: its next segment's predicted end
    enqueued: float = 0.0  # time.monotonic() when it joined the first exit's queue (server/statistics.py)
    compute_s: float = 0.0  # the segment runs it took part in, summed
    # Progressive answers (ModelStreamInfer's `progressive`): called on the event loop with the answer of every
    # exit this request passes without stopping, as soon as that exit is computed; its last answer is the future's.
    progress: Callable[[Answer], None] | None = None
    # Its priority level: 1 is the highest; with --priority-levels 1 (the default) every request is at 1.
    priority: int = 1
    released: bool = False  # its in-flight slot given up already (evicted for a higher-priority request)
    queue_timer: asyncio.TimerHandle | None = None  # its queue policy's timeout while it waits for exit 0
    trace: Trace | None = None  # sampled for a request trace (server/tracing.py)

    def sort_key(self, undeadlined_due_s: float) -> float:
        """Earliest deadline first; a job with none is due `undeadlined_due_s` after arrival (no starvation)."""
        ends = [t for t in (self.budget_end, self.deadline) if t is not None]
        return min(ends) if ends else self.arrival + undeadlined_due_s


@dataclass
class Answer:
    exit_index: int
    probs: np.ndarray  # calibrated (temperature-scaled) class probabilities at that exit
    reason: str
    latency_s: float
    budget_met: bool


@dataclass
class Step:
    """One segment run of one batch, as the pool thread decided it."""

    k: int
    jobs: list
    outputs: list
    probs: np.ndarray | None  # (B, classes) calibrated; None where nobody stops and none has a threshold
    reasons: list  # per job: why it stops here, or None to go on
    dt: float  # compute seconds
    now: float  # time.monotonic() of the decision
    size: int  # rows computed (a carried batch also computes the rows of requests that stopped before)
    rows: np.ndarray | None = None  # each job's row of `outputs`; None: job i is row i (see carry_stopped_rows)
    applied: bool = False  # its answers already sent while the chain went on
    progressed: bool = False  # its progressive answers already sent while the chain went on
    began: float = 0.0  # time.monotonic() when its run started (request traces)


@dataclass
class ExitQueue:
    """Requests waiting at one exit: highest priority level first, then earliest deadline first, then arrival."""

    # (rank, sort key, seq, job); rank: the job's priority level, + 0.5 once its queue policy delayed it (behind
    # its level's others, before the next level: Triton's DELAY)
    heap: list = field(default_factory=list)
    per_level: Counter = field(default_factory=Counter)  # queued jobs per priority level
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    busy: bool = False
    busy_batch: int = 0  # requests in the batch computing here while busy (a chain passing through, too)
    running: list = field(default_factory=list)  # the jobs of the batch being computed

    def push(self, job: Job, key: float, delayed: bool = False) -> None:
        heapq.heappush(self.heap, (job.priority + 0.5 if delayed else job.priority, key, job.seq, job))
        self.per_level[job.priority] += 1

    def pop(self) -> Job:
        job = heapq.heappop(self.heap)[-1]
        self.per_level[job.priority] -= 1
        return job

    def jobs(self) -> list[Job]:
        return [entry[-1] for entry in self.heap]

    def clear(self) -> None:
        self.heap.clear()
        self.per_level.clear()

    def ahead_of(self, priority: int | None) -> int:
        """Queued jobs served before a new one at this priority level would be (all of them when None)."""
        if priority is None:
            return len(self.heap)
        return sum(n for level, n in self.per_level.items() if level <= priority)

    def below(self, priority: int) -> list[tuple]:
        """The queued entries of a lower priority than `priority` (a greater level) whose caller still waits."""
        return [e for e in self.heap if e[-1].priority > priority and not e[-1].future.done()]

    def entry_of(self, job: Job) -> tuple | None:
        """The queued entry of `job`, or None if it is not queued here."""
        return next((e for e in self.heap if e[-1] is job), None)

    def remove(self, entries: list[tuple]) -> None:
        taken = {id(e[-1]) for e in entries}
        self.heap[:] = [e for e in self.heap if id(e[-1]) not in taken]
        heapq.heapify(self.heap)
        for e in entries:
            self.per_level[e[-1].priority] -= 1
