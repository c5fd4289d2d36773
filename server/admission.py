"""Admission and the queue rules of priorities: who may enter the engine, who is refused or evicted, and what a
request is predicted to wait. A mixin of ModelEngine (server/engine.py), which owns the queues, the metrics and
the configuration.

Why apart: every refusal a client can get before any compute (not serving, at capacity, a level's queue full, a
predicted wait past its deadline) and every eviction a higher priority causes is decided here, in one place
(README "Priorities", "Queue policies"; RESULTS §32, §35)."""

from __future__ import annotations

import time

from server.errors import InvalidInput, NotServing, Preempted, QueueFull, QueueTimeout
from server.jobs import Job
from server.queue_policy import NO_POLICY, QueuePolicy


class Admission:
    """Needs from its host: info, cfg, metrics, queues, latency, threads, inflight, accepting, stopped, refusal,
    _idle."""

    def priority_level(self, priority: int) -> int:
        """A request's priority (Triton's schedule-policy `priority`: 0 = the default level, 1 the highest, then
        2, ...) -> its level. With --priority-levels 1 (the default) every request is at level 1, whatever it
        sends, as Triton's clients may send one to any server."""
        levels = self.cfg.priority_levels
        if levels == 1:
            return 1
        if priority == 0:
            return self.cfg.default_priority_level or levels
        if not 1 <= priority <= levels:
            raise InvalidInput(f"priority {priority} does not exist; valid: 1 (highest) .. {levels}, or 0 for the default "
                               f"level ({self.cfg.default_priority_level or levels})")
        return priority

    def queue_policy(self, level: int) -> QueuePolicy:
        """The queue policy of a priority level (server/queue_policy.py)."""
        policies = self.cfg.queue_policies
        return NO_POLICY if policies is None else policies.of(level)

    def check_admission(self, n: int = 1, level: int = 1, evict: bool = False, per_level: dict[int, int] | None = None) -> None:
        """Refuse before any work: not serving, no room in the level's queue (its queue policy's max_queue_size),
        or no room for `n` more requests (a request of N images asks for N at once, before any of them is
        decoded). With priority levels, a full server makes room
        for a request by evicting as many queued requests of a lower priority (answered RESOURCE_EXHAUSTED;
        _evict says which); `evict=False` only checks that it could. `per_level`: the images of each level when a
        request's images differ in level (ClassifyBatch); `level` is then their lowest level (its largest number)."""
        if not self.accepting or self.stopped:
            self.metrics.rejections.labels(self.info.name, NotServing.reason).inc()
            raise NotServing(self.refusal)
        if n > 1 and n > self.cfg.max_inflight:  # one image is never too many: that is capacity
            raise InvalidInput(f"{n} images in one request; at most {self.cfg.max_inflight} (the server's in-flight "
                               "limit): split the request")
        if self.cfg.queue_policies is not None:  # (no per-request work without them)
            for lv, count in (per_level or {level: n}).items():
                self._check_level_queue(lv, count)
        short = self.inflight + n - self.cfg.max_inflight
        if short > 0 and self.cfg.priority_levels > 1 and self._evict(short, level, evict):
            return
        if short > 0:
            self.metrics.rejections.labels(self.info.name, QueueFull.reason).inc()
            raise QueueFull(f"server is at capacity ({self.cfg.max_inflight} requests in flight); retry with backoff")

    def _check_level_queue(self, level: int, n: int) -> None:
        """Refuse `n` more images of `level` beyond its queue policy's max_queue_size (none: no bound)."""
        cap = self.queue_policy(level).max_queue_size
        if not cap:
            return
        if n > cap:
            raise InvalidInput(f"{n} images of priority level {level} in one request; its queue holds at most {cap} "
                               "(its queue policy's max_queue_size): split the request")
        # An upper bound: the count includes queued requests whose caller has left (dropped when reached).
        if self.queues[0].per_level[level] + n > cap:
            self.metrics.rejections.labels(self.info.name, "level_" + QueueFull.reason).inc()
            raise QueueFull(f"priority level {level}'s queue is full ({cap} requests waiting for the first exit, its "
                            "queue policy's max_queue_size); retry with backoff")

    def _evict(self, count: int, level: int, evict: bool) -> bool:
        """Whether `count` queued requests below `level` make room and, with `evict`, evict them: the lowest
        level first, then the shallowest exit (the least work lost: at exit 0 none has been computed), then the
        latest deadline. Running batches are never touched."""
        # The queues' per-level counts first (an upper bound: they include requests whose caller has left): the
        # common case at capacity, a request of the lowest level, is then refused without a scan of the queues.
        if sum(n for q in self.queues for lv, n in q.per_level.items() if lv > level) < count:
            return False
        found = [(e, k) for k, q in enumerate(self.queues) for e in q.below(level)]
        if len(found) < count:
            return False
        if not evict:
            return True
        victims = sorted(found, key=lambda ek: (-ek[0][0], ek[1], -ek[0][1], -ek[0][2]))[:count]
        for k, q in enumerate(self.queues):
            mine = [e for e, at in victims if at == k]
            if mine:
                q.remove(mine)
                self.metrics.queue_depth.labels(self.info.name, str(k)).set(len(q.heap))
        for (_, _, _, job), k in victims:
            self._stop_queue_timer(job)
            job.released = True
            self._release()
            self.metrics.dropped.labels(self.info.name, str(k), Preempted.reason).inc()
            job.future.set_exception(Preempted(
                f"server is at capacity ({self.cfg.max_inflight} requests in flight) and this priority {job.priority} "
                f"request was queued{f' at exit {k}' if k else ''}: its place went to a priority {level} request; "
                "retry with backoff"))
        return True

    def _queue_timeout(self, job: Job) -> None:
        """On the loop: `job`'s queue policy timeout passed while it still waited for exit 0 (the timer is stopped
        when it leaves that queue). `reject`: answered RESOURCE_EXHAUSTED now; `delay`: queued again behind its
        level's requests that have not timed out, before the next level's."""
        job.queue_timer = None
        q = self.queues[0]
        entry = None if self.stopped or job.future.done() else q.entry_of(job)
        if entry is None:  # its caller left (dropped when reached) or the engine stopped
            return
        q.remove([entry])
        policy = self.queue_policy(job.priority)
        if policy.timeout_action == "delay":
            q.push(job, entry[1], delayed=True)
            self.metrics.queue_delayed.labels(self.info.name).inc()
            return
        self.metrics.queue_depth.labels(self.info.name, "0").set(len(q.heap))
        self.metrics.dropped.labels(self.info.name, "0", QueueTimeout.reason).inc()
        job.future.set_exception(QueueTimeout(
            f"waited {policy.timeout_ms:g} ms for the first exit, priority level {job.priority}'s queue policy "
            "timeout; retry with backoff or on another replica"))

    @staticmethod
    def _stop_queue_timer(job: Job) -> None:
        if job.queue_timer is not None:
            job.queue_timer.cancel()
            job.queue_timer = None

    def predict_finish(self, k: int, priority: int | None = None) -> float:
        """Seconds until a request joining exit k's queue now has its segment computed. Its own queue is one
        bound; the other is contention: all exits share the segment threads, so the work queued or running
        at every exit (at batched cost per request), spread over the threads, comes first too. `priority`:
        count only the queued requests served before one of that level (all of them when None)."""
        q = self.queues[k]
        own_queue = self.latency.predict_wait_and_run(k, q.ahead_of(priority), q.busy_batch if q.busy else 0)
        mb = self.cfg.max_batch
        # A busy exit's batch in flight counts whole (it may have just started), at the size it really runs:
        # not max_batch, which made budgets stop early under light load (bench/budget_at_load.py, RESULTS §13).
        backlog = sum(qi.ahead_of(priority) * self.latency.predict(i, mb) / mb
                      + (self.latency.predict(i, max(1, qi.busy_batch)) if qi.busy else 0)
                      for i, qi in enumerate(self.queues))
        return max(own_queue, backlog / self.threads + self.latency.predict(k, 1))

    def _shed_if_hopeless(self, arrival: float, budget_end: float | None, deadline: float | None, level: int) -> None:
        """Refuse now, rather than queue until it times out, a request whose exit 0 is predicted to finish
        (behind the requests already queued there) after its deadline (or budget, with shed_late_budgets).
        A request that finds exit 0 idle is always admitted: it is answered, late if need be (DESIGN.md)."""
        q = self.queues[0]
        if not q.heap and not q.busy:
            return
        wait, now = self.predict_finish(0, level), time.monotonic()
        for end, what in ((deadline, "gRPC deadline"), (budget_end if self.cfg.shed_late_budgets else None, "budget")):
            if end is not None and now + wait > end:
                self.metrics.rejections.labels(self.info.name, "predicted_" + what.split()[-1]).inc()
                raise QueueFull(f"predicted time to the first exit {1000 * wait:.1f} ms exceeds the request's {what} "
                                f"({1000 * (end - arrival):.1f} ms); retry later or on another replica")

    def _admit(self) -> None:
        self.inflight += 1
        self._idle.clear()
        self.metrics.inflight.labels(self.info.name).set(self.inflight)
        self.stats.pending(self.inflight)

    def _release(self) -> None:
        self.inflight -= 1
        self.metrics.inflight.labels(self.info.name).set(self.inflight)
        self.stats.pending(self.inflight)
        if self.inflight == 0:
            self._idle.set()
