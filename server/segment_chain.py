"""What runs in a segment thread (issue 12): a batch through segment k, each request's exit decided there
(DESIGN.md's rule, server/policy.py), and, while every request goes on and nobody waits, on through the next
segments in the same call. A mixin of ModelEngine, which owns the queues, backends, latency model and
configuration; the answers a chain decides are applied on the event loop by ModelEngine._apply."""

from __future__ import annotations

import time

import numpy as np

from server.jobs import Job, Step, calibrated
from server.policy import FINAL, stop_reason
from server.static_batches import FeaturesLease


class SegmentChain:
    """Needs from its host: backends, cfg, info, last, latency, finish_error, monitors, queues, _loop,
    threshold(), policy_confidence(), predict_finish(), _apply(), _progress()."""

    def _carries(self, backend) -> bool:
        """Whether a partly stopped batch goes on in place on this backend (EngineConfig.carry_stopped_rows)."""
        mode = self.cfg.carry_stopped_rows
        if mode == "auto":
            return self._binds(backend) and getattr(backend, "device_type", "cpu") != "cpu"
        return bool(mode)

    def _send_now(self, step: Step, on_loop: bool) -> None:
        """Answer a step's stopped requests while its chain goes on (from a segment thread: through the loop)."""
        step.applied = True
        if on_loop:
            self._apply(step, last=False)
        else:
            self._loop.call_soon_threadsafe(self._apply, step, False)

    def _progress_now(self, step: Step, on_loop: bool) -> None:
        """Send a step's progressive answers (Job.progress) while its chain goes on; the rest of the step is
        applied when the chain ends."""
        step.progressed = True
        if on_loop:
            self._progress(step)
        else:
            self._loop.call_soon_threadsafe(self._progress, step)

    def _runs_inline(self, k: int, batch: int) -> bool:
        """Whether segment k's run of `batch` requests is short enough to run on the event loop's thread."""
        limit_s = self.cfg.inline_compute_ms / 1000
        return limit_s > 0 and self.latency.predict(k, batch) <= limit_s

    def _compute(self, k: int, jobs: list[Job], x: np.ndarray, inline_limit_s: float | None = None) -> list[Step]:
        """In a pool thread: run segment k on the batch and decide each request's exit. While every request
        of the batch goes on, nobody waits at this worker's exit and the next exit is idle, run the next
        segment here too: no hop through the event loop, no thread hand-off, features never leave this call
        (issue 12). A batch in which any request stops returns at once, so no answer waits for others' work.
        On the event loop's thread instead (`inline_limit_s`, see EngineConfig.inline_compute_ms), the chain
        also stops before a segment that would take this call past that limit."""
        origin, steps = k, []
        started = time.perf_counter()
        rows = None  # the rows of `x` that are `jobs`' (None: all, in order); see EngineConfig.carry_stopped_rows
        lease = None  # a static-batch segment's features, still in its buffers (server/static_batches.py)
        try:
            while True:
                backend = self.backends[k]
                began, t0 = time.monotonic(), time.perf_counter()
                try:
                    # IOBinding where the backend has it: chained features stay in the backend's memory.
                    outputs = backend.run_bound(x) if self._binds(backend) else backend.run(x)
                except Exception as e:
                    try:
                        e.exit_index = k  # name the segment that failed, not the one the batch started at
                    except AttributeError:
                        pass
                    raise
                dt = time.perf_counter() - t0
                lease = outputs[0] if isinstance(outputs[0], FeaturesLease) else None  # the one before: consumed
                # Probabilities only where a request may stop on confidence or does stop here: one that just
                # passes through an exit needs none (issue 12: five numpy passes a segment saved).
                thresholds = [self.threshold(k, j) for j in jobs]
                progressive = any(j.progress is not None for j in jobs)
                needed = k == self.last or progressive or any(t is not None for t in thresholds)
                logits = outputs[-1] if rows is None else outputs[-1][rows]
                probs = calibrated(logits, self.info.exits[k].temperature) if needed else None
                now = time.monotonic()
                self._observe_finish(jobs, now)
                reasons = self._decide(k, jobs, probs, thresholds, now)
                stopping = any(r is not None for r in reasons)
                if probs is None and stopping:  # budget or max_exit: the answer's
                    probs = calibrated(logits, self.info.exits[k].temperature)
                size = len(outputs[-1])
                steps.append(Step(k, jobs, outputs, probs, reasons, dt, now, size, rows, began=began))
                nxt = k + 1
                carry = stopping and not all(r is not None for r in reasons) and self._carries(backend)
                if (k == self.last or (stopping and not carry) or any(j.future.done() for j in jobs)
                        or self.queues[origin].heap or self.queues[nxt].heap or self.queues[nxt].busy):
                    break
                if inline_limit_s is not None and \
                        time.perf_counter() - started + self.latency.predict(nxt, size) > inline_limit_s:
                    break  # the loop has been held long enough: the next exit's worker takes the batch up
                if progressive and not carry:  # their answers here go out now, while the chain runs on (a carried
                    self._progress_now(steps[-1], on_loop=inline_limit_s is not None)  # step is sent below)
                if k != origin:
                    self.queues[k].busy = False
                self.queues[nxt].busy, self.queues[nxt].busy_batch = True, size
                k, x = nxt, outputs[0]
                if lease is not None:  # the next run reads (and releases) it; nothing else may. But the monitor
                    # may sample a carried step's early answers: they keep a host copy (as a chain's end does).
                    steps[-1].outputs[0] = lease.copy() if carry and self.monitors is not None else None
                if carry:  # the stopped requests are answered now; the rest go on in their rows of x
                    going = [i for i, r in enumerate(reasons) if r is None]
                    self._send_now(steps[-1], on_loop=inline_limit_s is not None)
                    jobs = [jobs[i] for i in going]
                    rows = np.asarray(going) if rows is None else rows[going]
            if lease is not None:
                # The event loop pushes the requests that go on with these features, and the monitor samples
                # answers with them: copy them out now, while the buffer still holds them.
                keep = self.monitors is not None or any(r is None for r in steps[-1].reasons)
                steps[-1].outputs[0] = lease.to_host() if keep else None
        finally:  # the worker clears its own exit's flag; a chained exit's is cleared here, failure or not
            if k != origin:
                self.queues[k].busy = False
            if lease is not None:
                lease.release()  # after a failure, or when nobody needed the features
        return steps

    def _binds(self, backend) -> bool:
        if getattr(backend, "static_batches", False):
            return True  # its run_bound is its way of running (bucketed, pre-bound buffers)
        if not hasattr(backend, "run_bound") or self.cfg.io_binding is False:
            return False
        return self.cfg.io_binding is True or getattr(backend, "device_type", "cpu") != "cpu"

    def _observe_finish(self, jobs: list[Job], now: float) -> None:
        """Segment computed at `now`: how late against the prediction that let each budgeted request go on."""
        for job in jobs:
            if job.predicted_finish is not None:
                if self.finish_error is not None:
                    self.finish_error.observe(now - job.predicted_finish, now)
                job.predicted_finish = None

    def _decide(self, k: int, jobs: list[Job], probs: np.ndarray | None, thresholds: list[float | None],
                now: float) -> list[str | None]:
        """Why each request stops at exit k (server/policy.py), or None to go on. `probs` may be None when no
        request has a confidence threshold here."""
        if k == self.last:
            return [FINAL] * len(jobs)
        confidence = probs.max(axis=1) if probs is not None else np.zeros(len(jobs))  # min_confidence's
        # The calibrated policy's thresholds are on the model's policy score (server/policy.py), maybe another.
        scored = confidence if probs is None or not any(job.use_policy for job in jobs) else \
            self.policy_confidence(probs, confidence)
        # Only a request with a budget or deadline needs the prediction (its cost is ~20 us a segment: issue 12).
        timed = any(job.budget_end is not None or job.deadline is not None for job in jobs)
        # With priority levels, each level waits behind the queued requests of its own and higher levels only.
        per_level = timed and self.cfg.priority_levels > 1
        levels = {job.priority for job in jobs} if per_level else {None}
        predicted_at = {level: self.predict_finish(k + 1, level) if timed else 0.0 for level in levels}
        # The finish error's tail, and the answer's way back through the event loop (server/delivery.py).
        margin = self.finish_error.margin(now) + self.answer_lag.margin(now) if timed and self.finish_error is not None else 0.0
        reasons = []
        for i, job in enumerate(jobs):
            predicted = predicted_at[job.priority if per_level else None]
            end = min((t for t in (job.budget_end, job.deadline) if t is not None), default=None)
            c = scored[i] if job.use_policy else confidence[i]
            reasons.append(stop_reason(k, self.last, job.max_exit, float(c), thresholds[i], now,
                                       predicted + margin, end))
            if reasons[-1] is None and job.budget_end is not None:
                # Judged when it is computed there, against the uncorrected prediction (no feedback). Budgets
                # only: a request with just a far gRPC deadline waits behind them (earliest deadline first), so
                # its errors would overstate what a budgeted request meets.
                job.predicted_finish = now + predicted
        return reasons
