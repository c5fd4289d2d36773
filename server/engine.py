"""The early-exit engine of one model: per-exit queues (earliest deadline first), batching, segments
run off the event loop, and the exit rule of DESIGN.md.

A request runs segment 0, then 1, ... Each segment has an asyncio worker that takes every waiting
request (up to max_batch, in deadline order), runs them as one batch on a thread pool, and for each
decides: answer now (confidence, budget, final, max_exit) or join the next segment's queue with its
features. Batching is continuous: while a batch computes, new arrivals gather into the next one, and an
optional max_queue_delay waits a little longer for company.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from server.backends import Backend
from server.errors import DeadlineExceeded, NotServing, QueueFull
from server.latency import LatencyModel
from server.metrics import Metrics
from server.policy import stop_reason
from server.repository import ModelInfo

# gRPC cancels a handler when the client's deadline passes, measured on the client's clock; a cancellation
# this close to our estimate of the deadline is that expiry, not a client's cancel.
DEADLINE_SLACK_S = 0.02


@dataclass(frozen=True)
class EngineConfig:
    max_batch: int = 32
    max_queue_delay_ms: float = 0.0  # extra wait for a fuller batch; 0 = batch only what is waiting
    max_inflight: int = 256  # admitted, unanswered requests; more get RESOURCE_EXHAUSTED at once
    # Shed a request at admission when the predicted wait in exit 0's queue already passes its budget
    # (always done for the gRPC deadline, a hard limit). Off by default: DESIGN.md answers a too-small
    # budget from exit 0 with budget_met = false; under overload, shedding keeps accepted budgets.
    shed_late_budgets: bool = False


@dataclass
class Job:
    x: np.ndarray  # input of the next segment, one sample
    arrival: float  # time.monotonic() at arrival
    budget_end: float | None  # arrival + budget_ms
    deadline: float | None  # the gRPC deadline (hard)
    min_confidence: float | None
    max_exit: int
    future: asyncio.Future
    seq: int = 0
    drop_reason: str = "cancelled"  # why a job whose caller left is dropped: "cancelled" or "deadline"

    @property
    def sort_key(self) -> float:
        ends = [t for t in (self.budget_end, self.deadline) if t is not None]
        return min(ends) if ends else math.inf


@dataclass
class Answer:
    exit_index: int
    probs: np.ndarray  # calibrated (temperature-scaled) class probabilities at that exit
    reason: str
    latency_s: float
    budget_met: bool


@dataclass
class ExitQueue:
    heap: list = field(default_factory=list)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    busy: bool = False


class ModelEngine:
    def __init__(self, info: ModelInfo, backends: list[Backend], cfg: EngineConfig, metrics: Metrics,
                 executor: ThreadPoolExecutor, threads: int):
        self.info, self.backends, self.cfg, self.metrics, self.executor = info, backends, cfg, metrics, executor
        self.threads = max(1, threads)  # the executor's size: segment runs of all exits share these threads
        self.last = len(info.exits) - 1
        self.latency = LatencyModel(len(info.exits), cfg.max_batch)
        self.queues: list[ExitQueue] = []
        self.workers: list[asyncio.Task] = []
        self.inflight = 0
        self.accepting = False
        self._seq = itertools.count()
        self._idle = asyncio.Event()
        self._idle.set()
        self.successor: ModelEngine | None = None  # set when a reload replaces this version
        self.stopped = False

    # --- lifecycle -----------------------------------------------------------------------------------

    def calibrate_latency(self) -> None:
        """Measure every segment at batch 1..max_batch on the inputs it really gets (blocking)."""
        x = np.zeros(self.info.input_shape, dtype=np.float32)
        for k, backend in enumerate(self.backends):
            self.latency.calibrate(k, backend.run, x)
            out = backend.run(x[None])
            x = out[0][0] if k < self.last else x
            self.metrics.latency_estimate.labels(self.info.name, str(k)).set(self.latency.predict(k, 1))

    def start(self) -> None:
        self.queues = [ExitQueue() for _ in self.backends]
        self.workers = [asyncio.create_task(self._worker(k), name=f"{self.info.name}-exit{k}")
                        for k in range(len(self.backends))]
        self.accepting = True
        self.metrics.model_info.labels(self.info.name).info({
            "version": self.info.version, "architecture": self.info.manifest["architecture"],
            "exits": str(len(self.info.exits)), "backend": self.backends[0].name})

    async def drain(self, timeout_s: float) -> bool:
        """Stop admitting; wait until every admitted request is answered. True if it finished in time."""
        self.accepting = False
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False

    async def stop(self) -> None:
        self.stopped = True
        for w in self.workers:
            w.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)

    async def retire(self, successor: ModelEngine, settle_s: float, timeout_s: float) -> bool:
        """After a reload: answer everything admitted here, then stop. Requests that looked this version
        up just before the switch (still decoding) are handed to the successor, so none is lost."""
        self.successor = successor
        await asyncio.sleep(settle_s)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            done = True
        except asyncio.TimeoutError:
            done = False
        await self.stop()
        return done

    # --- requests -------------------------------------------------------------------------------------

    async def classify(self, x: np.ndarray, arrival: float, budget_ms: float | None, min_confidence: float | None,
                       max_exit: int | None, deadline: float | None) -> Answer:
        if self.stopped and self.successor is not None and self.successor.info.input_shape == self.info.input_shape:
            return await self.successor.classify(x, arrival, budget_ms, min_confidence, max_exit, deadline)
        self.check_admission()
        budget_end = arrival + budget_ms / 1000 if budget_ms is not None else None
        self._shed_if_hopeless(arrival, budget_end, deadline)
        job = Job(x, arrival, budget_end, deadline, min_confidence,
                  self.last if max_exit is None else min(max_exit, self.last), asyncio.get_running_loop().create_future())
        self._admit()
        try:
            self._push(0, job)
            return await job.future
        finally:
            self._release()
            # The caller went away (asyncio cancels the awaited future with the task): the worker drops
            # the job before compute, counting why.
            if not job.future.done() or job.future.cancelled():
                expired = deadline is not None and time.monotonic() >= deadline - DEADLINE_SLACK_S
                job.drop_reason = "deadline" if expired else "cancelled"
                job.future.cancel()

    def check_admission(self) -> None:
        if not self.accepting or self.stopped:
            self.metrics.rejections.labels(self.info.name, NotServing.reason).inc()
            raise NotServing("server is shutting down or not ready; retry on another replica")
        if self.inflight >= self.cfg.max_inflight:
            self.metrics.rejections.labels(self.info.name, QueueFull.reason).inc()
            raise QueueFull(f"server is at capacity ({self.cfg.max_inflight} requests in flight); retry with backoff")

    def predict_finish(self, k: int) -> float:
        """Seconds until a request joining exit k's queue now has its segment computed. Its own queue is one
        bound; the other is contention: all exits share the segment threads, so the work queued or running
        at every exit (at batched cost per request), spread over the threads, comes first too."""
        q = self.queues[k]
        own_queue = self.latency.predict_wait_and_run(k, len(q.heap), q.busy)
        mb = self.cfg.max_batch
        backlog = sum(len(qi.heap) * self.latency.predict(i, mb) / mb + (0.5 * self.latency.predict(i, mb) if qi.busy else 0)
                      for i, qi in enumerate(self.queues))
        return max(own_queue, backlog / self.threads + self.latency.predict(k, 1))

    def _shed_if_hopeless(self, arrival: float, budget_end: float | None, deadline: float | None) -> None:
        """Refuse now, rather than queue until it times out, a request whose exit 0 is predicted to finish
        (behind the requests already queued there) after its deadline (or budget, with shed_late_budgets).
        A request that finds exit 0 idle is always admitted: it is answered, late if need be (DESIGN.md)."""
        q = self.queues[0]
        if not q.heap and not q.busy:
            return
        wait, now = self.predict_finish(0), time.monotonic()
        for end, what in ((deadline, "gRPC deadline"), (budget_end if self.cfg.shed_late_budgets else None, "budget")):
            if end is not None and now + wait > end:
                self.metrics.rejections.labels(self.info.name, "predicted_" + what.split()[-1]).inc()
                raise QueueFull(f"predicted time to the first exit {1000 * wait:.1f} ms exceeds the request's {what} "
                                f"({1000 * (end - arrival):.1f} ms); retry later or on another replica")

    def _admit(self) -> None:
        self.inflight += 1
        self._idle.clear()
        self.metrics.inflight.labels(self.info.name).set(self.inflight)

    def _release(self) -> None:
        self.inflight -= 1
        self.metrics.inflight.labels(self.info.name).set(self.inflight)
        if self.inflight == 0:
            self._idle.set()

    def _push(self, k: int, job: Job) -> None:
        job.seq = next(self._seq)
        q = self.queues[k]
        heapq.heappush(q.heap, (job.sort_key, job.seq, job))
        self.metrics.queue_depth.labels(self.info.name, str(k)).set(len(q.heap))
        q.wakeup.set()

    # --- workers --------------------------------------------------------------------------------------

    async def _worker(self, k: int) -> None:
        q = self.queues[k]
        loop = asyncio.get_running_loop()
        name, exit_label = self.info.name, str(k)
        while True:
            await q.wakeup.wait()
            q.wakeup.clear()
            if self.cfg.max_queue_delay_ms > 0 and len(q.heap) < self.cfg.max_batch:
                await asyncio.sleep(self.cfg.max_queue_delay_ms / 1000)
            while q.heap:
                jobs = self._take_batch(k, q)
                self.metrics.queue_depth.labels(name, exit_label).set(len(q.heap))
                if not jobs:
                    continue
                batch = np.stack([j.x for j in jobs])
                q.busy = True
                t0 = time.perf_counter()
                try:
                    outputs = await loop.run_in_executor(self.executor, self.backends[k].run, batch)
                except Exception as e:  # a backend failure fails this batch, never the server
                    for j in jobs:
                        if not j.future.done():
                            j.future.set_exception(RuntimeError(f"exit {k} failed: {type(e).__name__}: {e}"))
                    continue
                finally:
                    q.busy = False
                dt = time.perf_counter() - t0
                self.latency.observe(k, len(jobs), dt)
                self.metrics.compute_latency.labels(name, exit_label).observe(dt)
                self.metrics.batch_size.labels(name, exit_label).observe(len(jobs))
                self._route(k, jobs, outputs)

    def _take_batch(self, k: int, q: ExitQueue) -> list[Job]:
        """Pop up to max_batch jobs in deadline order, dropping cancelled and expired ones before compute."""
        jobs, now = [], time.monotonic()
        while q.heap and len(jobs) < self.cfg.max_batch:
            _, _, job = heapq.heappop(q.heap)
            if job.future.done():  # cancelled by the client, or its deadline passed and gRPC gave up on it
                self.metrics.dropped.labels(self.info.name, str(k), job.drop_reason).inc()
                continue
            if job.deadline is not None and now >= job.deadline:
                self.metrics.dropped.labels(self.info.name, str(k), DeadlineExceeded.reason).inc()
                job.future.set_exception(DeadlineExceeded(f"deadline passed while queued for exit {k}"))
                continue
            jobs.append(job)
        return jobs

    def _route(self, k: int, jobs: list[Job], outputs: list[np.ndarray]) -> None:
        features = outputs[0] if k < self.last else None
        # Calibrated probabilities for the whole batch, once: they decide the exit and are the answer.
        z = outputs[-1] / self.info.exits[k].temperature
        probs = np.exp(z - z.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        confidence = probs.max(axis=1)
        now = time.monotonic()
        nxt = self.queues[k + 1] if k < self.last else None
        next_estimate = self.predict_finish(k + 1) if nxt else 0.0
        for i, job in enumerate(jobs):
            if job.future.done():
                continue
            end = min((t for t in (job.budget_end, job.deadline) if t is not None), default=None)
            reason = stop_reason(k, self.last, job.max_exit, float(confidence[i]), job.min_confidence, now, next_estimate, end)
            if reason is None:
                job.x = features[i]
                self._push(k + 1, job)
                continue
            latency = now - job.arrival
            met = job.budget_end is None or now <= job.budget_end
            self.metrics.exits.labels(self.info.name, str(k), reason).inc()
            self.metrics.request_latency.labels(self.info.name).observe(latency)
            if not met:
                self.metrics.budget_misses.labels(self.info.name).inc()
            job.future.set_result(Answer(k, probs[i], reason, latency, met))
