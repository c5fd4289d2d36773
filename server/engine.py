"""The early-exit engine of one model: per-exit queues (earliest deadline first), batching, segments
run off the event loop (server/segment_chain.py: a batch through one or more segments and the exit rule of
DESIGN.md), answers applied on the loop.

A request runs segment 0, then 1, ... Each segment has an asyncio worker that takes every waiting
request (up to max_batch, in deadline order), runs them as one batch on a thread pool, and for each
decides: answer now (confidence, budget, final, max_exit) or join the next segment's queue with its
features. Batching is continuous: while a batch computes, new arrivals gather into the next one, and an
optional max_queue_delay waits a little longer for company.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from server.admission import Admission
from server.backends import Backend, to_host
from server.delivery import Delivery
from server.engine_config import EngineConfig
from server.errors import DeadlineExceeded, NotServing, ServingError
from server.jobs import Answer, ExitQueue, Job, Step
from server.latency import FinishError, LatencyModel
from server.metrics import Metrics
from server.monitor import ExitMonitor, monitors_from_manifest
from server.policy import CONTINUED, policy_confidence
from server.repository import ModelInfo
from server.response_cache import ResponseCache
from server.segment_chain import SegmentChain
from server.shadow import AgreementSampling, ShadowJob
from server.statistics import ModelStatistics
from server.thread_gate import ThreadGate
from server.tracing import Tracer

log = logging.getLogger("auxnet.server")

# gRPC cancels a handler when the client's deadline passes, measured on the client's clock; a cancellation
# this close to our estimate of the deadline is that expiry, not a client's cancel.
DEADLINE_SLACK_S = 0.02


class ModelEngine(SegmentChain, AgreementSampling, Delivery, Admission):
    def __init__(self, info: ModelInfo, backends: list[Backend], cfg: EngineConfig, metrics: Metrics,
                 executor: ThreadPoolExecutor, threads: int):
        self.info, self.backends, self.cfg, self.metrics, self.executor = info, backends, cfg, metrics, executor
        self.threads = max(1, threads)  # the executor's size: segment runs of all exits share these threads
        self.last = len(info.exits) - 1
        self.latency = LatencyModel(len(info.exits), cfg.max_batch)
        self.finish_error = FinishError(cfg.finish_margin_quantile) if cfg.finish_margin_quantile > 0 else None
        # How long an answer takes from its segment run's end to its handler resuming (the event loop's lag), the
        # same quantile: a budget is met when the answer leaves, so going on must leave room for it (RESULTS §37).
        self.answer_lag = FinishError(cfg.finish_margin_quantile) if cfg.finish_margin_quantile > 0 else None
        self._margin_shown: float | None = None  # the finish margin the gauge last showed
        self.queues: list[ExitQueue] = []
        self.workers: list[asyncio.Task] = []
        self.inflight = 0
        self.accepting = False
        self._seq = itertools.count()
        self._idle = asyncio.Event()
        self._idle.set()
        self.successor: ModelEngine | None = None  # set when a reload replaces this version
        self.memory_estimate: int | None = None  # bytes, set by the app that loaded it (server/load_memory.py)
        self.device_memory_estimate: int | None = None  # GPU bytes, where the sessions run on one (likewise)
        self.stopped = False
        self.refusal = "server is shutting down or not ready; retry on another replica"  # once not accepting
        self.monitors: list[ExitMonitor] | None = None
        if cfg.monitor_fraction > 0 and self.last > 0:
            self.monitors = monitors_from_manifest(info.manifest["exits"], cfg.monitor_false_alarm_samples)
            if self.monitors is None:
                log.warning("model %s has no agreement tables (exported before the monitor existed): agreement "
                            "monitor off; re-export it to turn it on", info.name)
        self._sample_rng = random.Random(0)
        self._metric_children: dict = {}
        # Triton's statistics extension (server/statistics.py) and its Prometheus metrics (server/triton_metrics.py)
        self.stats = ModelStatistics(mirror=metrics.triton.series(info.name, info.version))
        self.shadow: list[ShadowJob] = []
        self._shadow_wakeup = asyncio.Event()
        self._quiet = asyncio.Event()  # set while no exit has work queued or running
        self._quiet.set()
        self.cache = ResponseCache(int(cfg.response_cache_mb * 2**20)) if cfg.response_cache_mb > 0 else None
        self.tracer: Tracer | None = None  # request traces (server/tracing.py), set by the app when configured
        self._layers = tuple(e.layer for e in info.exits)

    # --- lifecycle -----------------------------------------------------------------------------------

    def calibrate_latency(self) -> None:
        """Measure every segment at batch 1..max_batch on the inputs it really gets (blocking). On a GPU
        provider every batch size also runs once first: cuDNN picks (by timing) a convolution algorithm for
        each new input shape on its first run, tens of ms that would otherwise land on the first request of
        each batch size (static batches only ever run their buckets, which their warm-up covered)."""
        x = np.zeros(self.info.input_shape, dtype=np.float32)
        for k, backend in enumerate(self.backends):
            if getattr(backend, "device_type", "cpu") != "cpu" and not getattr(backend, "static_batches", False):
                for b in range(1, self.cfg.max_batch + 1):
                    backend.run(np.repeat(x[None], b, axis=0))
            self.latency.calibrate(k, backend.run, x)
            out = backend.run(x[None])
            x = out[0][0] if k < self.last else x
            self.metrics.latency_estimate.labels(self.info.name, str(k)).set(self.latency.predict(k, 1))

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.queues = [ExitQueue() for _ in self.backends]
        # Priorities: the threads go to the exit with the best request (server/thread_gate.py), not first come.
        self.gate = ThreadGate(self.threads) if self.cfg.priority_levels > 1 else None
        self.workers = [asyncio.create_task(self._worker(k), name=f"{self.info.name}-exit{k}")
                        for k in range(len(self.backends))]
        if self.monitors is not None:
            self.workers.append(asyncio.create_task(self._shadow_worker(), name=f"{self.info.name}-monitor"))
            for k, m in enumerate(self.monitors):
                self._export_threshold(k, m)
        self.accepting = True
        self.metrics.model_info.labels(*self._info_labels()).set(1)
        if self.memory_estimate is not None:
            self.metrics.model_memory.labels(self.info.name, self.info.version).set(self.memory_estimate)
        if self.device_memory_estimate is not None:
            self.metrics.model_device_memory.labels(self.info.name, self.info.version).set(self.device_memory_estimate)

    def _info_labels(self) -> tuple[str, ...]:
        """The auxnet_model_info series of this model version."""
        info = self.info
        return (info.name, info.version, info.manifest["architecture"], str(len(info.exits)), self.backends[0].name,
                info.precision, info.policy_score)

    async def drain(self, timeout_s: float) -> bool:
        """Stop admitting; wait until every admitted request is answered. True if it finished in time."""
        self.accepting = False
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False

    async def stop(self) -> None:
        """Stop the workers. Any request still queued or computing (a drain or retire that timed out) is
        answered UNAVAILABLE, so that no caller waits forever and clients retry elsewhere."""
        self.stopped = True
        for gauge, labels in ((self.metrics.model_info, self._info_labels()),
                              (self.metrics.model_memory, (self.info.name, self.info.version)),
                              (self.metrics.model_device_memory, (self.info.name, self.info.version))):
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # a retired version is no longer the loaded model
                gauge.labels(*labels).set(0)  # (series cannot be removed across processes)
            else:
                try:
                    gauge.remove(*labels)
                except KeyError:
                    pass
        for w in self.workers:
            w.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)
        for k, q in enumerate(self.queues):
            for job in q.jobs() + q.running:
                if not job.future.done():
                    self.metrics.dropped.labels(self.info.name, str(k), "stopped").inc()
                    job.future.set_exception(NotServing(f"model version {self.info.version} stopped before answering "
                                                        "(shutdown or reload grace ran out); retry"))
            q.clear()
            q.running = []

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
                       max_exit: int | None, deadline: float | None, use_policy: bool = False, priority: int = 0, *,
                       progress: Callable[[Answer], None] | None = None) -> Answer:
        """The answer of the exit where the request stops. `priority`: the request's (0: the default level; see
        priority_level). `progress`, if given, also gets (on the event loop) the answer of every exit passed
        before it, as soon as that exit is computed (Job.progress)."""
        if self.stopped and self.successor is not None and self.successor.info.input_shape == self.info.input_shape:
            return await self.successor.classify(x, arrival, budget_ms, min_confidence, max_exit, deadline, use_policy,
                                                 priority, progress=progress)
        level = self.priority_level(priority)
        if budget_ms is None and self.cfg.default_budget_ms > 0:
            budget_ms = self.cfg.default_budget_ms
        # Sampled first, so that a cache hit and a refusal are traced too (their status says which)
        trace = self.tracer.sample(self.info.name, self.info.version, arrival, budget_ms, level) if self.tracer is not None else None
        cache_key = None
        if self.cache is not None and progress is None and self.accepting and not self.stopped:
            cache_key, hit = self._look_up(x, arrival, budget_ms, min_confidence, max_exit, use_policy, level)
            if hit is not None:  # before admission: a hit takes no slot, queue or compute
                if trace is not None:
                    self.tracer.cached(trace, hit, self._layers)
                return hit
        budget_end = arrival + budget_ms / 1000 if budget_ms is not None else None
        try:
            self.check_admission(1, level, evict=True)
            self._shed_if_hopeless(arrival, budget_end, deadline, level)
        except ServingError as e:
            if trace is not None:
                self.tracer.refused(trace, e)
            raise
        job = Job(x, arrival, budget_end, deadline, min_confidence,
                  self.last if max_exit is None else min(max_exit, self.last), asyncio.get_running_loop().create_future(),
                  use_policy, progress=progress, priority=level)
        job.trace = trace
        self._admit()
        try:
            job.enqueued = time.monotonic()
            self._push(0, job)
            timeout_ms = self.queue_policy(level).timeout_ms
            if timeout_ms > 0:
                job.queue_timer = self._loop.call_later(timeout_ms / 1000, self._queue_timeout, job)
            try:
                answer = await job.future
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats.failed(time.monotonic() - arrival)
                raise
            answer = self._delivered(job, answer)
            if cache_key is not None:
                self._remember(cache_key, answer)
            self.stats.answered(answer.latency_s, job.enqueued - arrival, job.compute_s)
            return answer
        finally:
            if not job.released:
                self._release()
            # The caller went away (asyncio cancels the awaited future with the task): the worker drops
            # the job before compute, counting why.
            if not job.future.done() or job.future.cancelled():
                expired = deadline is not None and time.monotonic() >= deadline - DEADLINE_SLACK_S
                job.drop_reason = "deadline" if expired else "cancelled"
                job.future.cancel()
            if job.trace is not None:
                self.tracer.finish(job.trace, job.future, job.drop_reason, self._layers)

    def _push(self, k: int, job: Job) -> None:
        job.seq = next(self._seq)
        if job.trace is not None:
            job.trace.queue(k, time.monotonic())
        q = self.queues[k]
        q.push(job, job.sort_key(self.cfg.undeadlined_due_ms / 1000))
        self.metrics.queue_depth.labels(self.info.name, str(k)).set(len(q.heap))
        self._quiet.clear()
        q.wakeup.set()

    # --- workers --------------------------------------------------------------------------------------

    async def _worker(self, k: int) -> None:
        q = self.queues[k]
        gate = self.gate
        loop = asyncio.get_running_loop()
        depth = self.metrics.queue_depth.labels(self.info.name, str(k))
        while True:
            await q.wakeup.wait()
            q.wakeup.clear()
            if self.cfg.max_queue_delay_ms > 0 and len(q.heap) < self.cfg.max_batch:
                await asyncio.sleep(self.cfg.max_queue_delay_ms / 1000)
            while q.heap:
                if gate is not None:  # a thread first, then the batch: it takes whoever came meanwhile
                    await gate.acquire(q)
                jobs = self._take_batch(k, q)
                depth.set(len(q.heap))
                inline = bool(jobs) and self._runs_inline(k, len(jobs))
                held = gate is not None
                if held and (inline or not jobs):
                    gate.release()
                    held = False
                if not jobs:
                    continue
                q.busy, q.busy_batch, q.running = True, len(jobs), jobs
                try:
                    x = np.stack([j.x for j in jobs])
                    if inline:
                        steps = self._compute(k, jobs, x, inline_limit_s=self.cfg.inline_compute_ms / 1000)
                        for step in steps:
                            self._metric(self.metrics.inline_runs, self.info.name, str(step.k)).inc()
                    else:
                        try:
                            steps = await loop.run_in_executor(self.executor, self._compute, k, jobs, x)
                        finally:
                            if held:  # the thread is free once the run is: the answers are the loop's work
                                gate.release()
                                held = False
                    q.busy = False
                    self._apply_all(steps)
                    q.running = []
                except asyncio.CancelledError:
                    raise  # stop(): it answers the jobs left in q.running
                except Exception as e:  # noqa: BLE001 - a failure fails this batch, never the worker or the server
                    q.running = []
                    self._fail(k, jobs, e)
                finally:
                    q.busy = False
                    if held:  # failed before its run (np.stack): the thread was never used
                        gate.release()
                if inline:
                    await asyncio.sleep(0)  # let the loop serve I/O between batches run on its thread
            if all(not qi.heap and not qi.busy for qi in self.queues):
                self._quiet.set()

    def _apply_all(self, steps: list[Step]) -> None:
        for i, step in enumerate(steps):
            if not step.applied:
                self._apply(step, last=i == len(steps) - 1)
        if self.finish_error is not None:
            now = time.monotonic()
            margin = self.finish_error.margin(now) + self.answer_lag.margin(now)
            if margin != self._margin_shown:  # it changes every 16 observations at most: no gauge write per batch
                self._margin_shown = margin
                self._metric(self.metrics.finish_margin, self.info.name).set(margin)

    def _fail(self, k: int, jobs: list[Job], e: Exception) -> None:
        failed = getattr(e, "exit_index", k)
        log.exception("exit %d: batch of %d failed", failed, len(jobs))
        for j in jobs:
            if not j.future.done():
                j.future.set_exception(RuntimeError(f"exit {failed} failed: {type(e).__name__}: {e}"))

    def _take_batch(self, k: int, q: ExitQueue) -> list[Job]:
        """Pop up to max_batch jobs in deadline order, dropping cancelled and expired ones before compute. A
        batch holds one priority level: on a CPU each row costs its full compute, so lower levels' requests
        riding along would make a higher level's batch as slow as a full one (bench/priority.py)."""
        jobs, now = [], time.monotonic()
        while q.heap and len(jobs) < self.cfg.max_batch:
            if jobs and q.heap[0][-1].priority != jobs[0].priority:
                break
            job = q.pop()
            if k == 0:
                self._stop_queue_timer(job)
            if job.future.done():  # cancelled by the client, or its deadline passed and gRPC gave up on it
                self.metrics.dropped.labels(self.info.name, str(k), job.drop_reason).inc()
                continue
            if job.deadline is not None and now >= job.deadline:
                self.metrics.dropped.labels(self.info.name, str(k), DeadlineExceeded.reason).inc()
                job.future.set_exception(DeadlineExceeded(f"deadline passed while queued for exit {k}"))
                continue
            jobs.append(job)
        return jobs

    def _apply(self, step: Step, last: bool) -> None:
        """On the event loop: metrics of one segment run, the answers it decided, and (for the last step of a
        chain) the requests that go on joining the next exit's queue."""
        k, name = step.k, self.info.name
        self.latency.observe(k, step.size, step.dt)
        self._metric(self.metrics.compute_latency, name, str(k)).observe(step.dt)
        self._metric(self.metrics.batch_size, name, str(k)).observe(len(step.jobs))
        self.stats.segment_run(step.size, step.dt)
        host = []  # features copied to the host only if some request needs them (queued, or sampled)

        def features():
            """None where a static-batch chain's features were consumed by its next segment (no sample then)."""
            if not host:
                host.append(None if step.outputs[0] is None else to_host(step.outputs[0]))
            return host[0]

        confidence = step.probs.max(axis=1) if step.probs is not None else None  # None: nobody stops or needs it
        # The policy's score, for the monitor only (its tables are binned on it; _decide took its own).
        scored = None if confidence is None or self.monitors is None else self.policy_confidence(step.probs, confidence)
        rows = range(len(step.jobs)) if step.rows is None else step.rows  # each job's row of the features
        answered = {}
        for i, job in enumerate(step.jobs):
            job.compute_s += step.dt
            if job.trace is not None:
                job.trace.segment(k, step.began, step.began + step.dt, step.size, len(step.jobs))
            if job.future.done():
                continue
            reason = step.reasons[i]
            if reason is None:
                if job.progress is not None and not step.progressed:
                    job.progress(self._continued(step, i))
                if last:
                    job.x = features()[rows[i]]
                    self._push(k + 1, job)
                if self.monitors is not None and confidence is not None and \
                        self._held_back(k, job, float((scored if job.use_policy else confidence)[i])) and \
                        self._sample_rng.random() < self.cfg.monitor_fraction and features() is not None:
                    # Adaptation kept this one from answering here: the monitor still judges what the calibrated
                    # threshold would have answered, or it could never see an exit recover.
                    self._sample(ShadowJob(features()[rows[i]], k + 1, k, int(step.probs[i].argmax()),
                                           float(scored[i])))
                continue
            # Latency and budget as decided here; judged again when the handler resumes (_delivered).
            latency = step.now - job.arrival
            met = job.budget_end is None or step.now <= job.budget_end
            answered[reason] = answered.get(reason, 0) + 1
            job.future.set_result(Answer(k, step.probs[i], reason, latency, met))
            if job.trace is not None:
                job.trace.answered = time.monotonic()
            if k < self.last and self.monitors is not None and self._sample_rng.random() < self.cfg.monitor_fraction \
                    and features() is not None:
                self._sample(ShadowJob(features()[rows[i]], k + 1, k, int(step.probs[i].argmax()), float(scored[i])))
        for reason, n in answered.items():  # one counter update per batch and reason, not per request
            self._metric(self.metrics.exits, name, str(k), reason).inc(n)

    def _progress(self, step: Step) -> None:
        """On the event loop: the progressive answers of a step whose chain goes on (SegmentChain._progress_now)."""
        for i, job in enumerate(step.jobs):
            if job.progress is not None and step.reasons[i] is None and not job.future.done():
                job.progress(self._continued(step, i))

    @staticmethod
    def _continued(step: Step, i: int) -> Answer:
        """The answer at this step's exit of job i, which goes on deeper (a progressive answer)."""
        job = step.jobs[i]
        return Answer(step.k, step.probs[i], CONTINUED, step.now - job.arrival,
                      job.budget_end is None or step.now <= job.budget_end)

    def _metric(self, family, *labels):
        """A metric's labelled child, looked up once (prometheus_client's labels() costs a lock and a dict)."""
        key = (id(family), labels)
        child = self._metric_children.get(key)
        if child is None:
            child = self._metric_children[key] = family.labels(*labels)
        return child

    def threshold(self, k: int, job: Job) -> float | None:
        """The confidence a request needs to stop at exit k: its min_confidence or the calibrated policy's
        threshold, made stricter while online adaptation holds exit k (server/monitor.py)."""
        return self.rule_threshold(k, job.min_confidence, job.use_policy)

    def rule_threshold(self, k: int, min_confidence: float | None, use_policy: bool) -> float | None:
        """threshold() for a rule given by its parts (server/explain.py replays a request's rule)."""
        base = self.info.exits[k].threshold if use_policy else min_confidence
        if base is None or self.monitors is None or k >= self.last:
            return base
        return self.monitors[k].effective_threshold(base)

    def policy_confidence(self, probs: np.ndarray, top1: np.ndarray) -> np.ndarray:
        """The policy's score of each row of calibrated probabilities (`top1`: their maxima, already taken)."""
        score = self.info.policy_score
        return top1 if score == "top1" else policy_confidence(probs, score)

    def _held_back(self, k: int, job: Job, confidence: float) -> bool:
        """True when only online adaptation kept `job` from stopping at exit k on confidence."""
        base = self.info.exits[k].threshold if job.use_policy else job.min_confidence
        return (k < self.last and self.monitors[k].scale < 1 and base is not None and confidence >= base
                and k < job.max_exit)

    def policy_threshold(self, k: int) -> float:
        """The calibrated policy's threshold at exit k now (after any adaptation)."""
        t = self.info.exits[k].threshold
        return t if self.monitors is None or k >= self.last else self.monitors[k].effective_threshold(t)
