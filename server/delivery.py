"""How an answer leaves the engine: judged when its handler resumes, or taken from the response cache. A mixin of
ModelEngine (server/engine.py), which owns the metrics, the statistics and the configuration.

Why apart: the engine decides answers on a pool thread and applies them on the event loop; what the caller gets
is judged later still, when its handler resumes (RESULTS §37, §38), and a repeated image need not reach the
queues at all (server/response_cache.py, RESULTS §40)."""

from __future__ import annotations

import time

import numpy as np

from server.jobs import Answer, Job
from server.response_cache import Cached


class Delivery:
    """Needs from its host: info, cfg, metrics, stats, last, monitors, cache, answer_lag, _metric."""

    def _look_up(self, x: np.ndarray, arrival: float, budget_ms: float | None, min_confidence: float | None,
                 max_exit: int | None, use_policy: bool, level: int) -> tuple[tuple, Answer | None]:
        """(the request's cache key, its answer from the cache or None on a miss)."""
        started = time.monotonic()
        key = self.cache.key(x, use_policy, min_confidence, self.last if max_exit is None else min(max_exit, self.last),
                             tuple(m.scale for m in self.monitors) if self.monitors else ())
        cached = self.cache.get(key)
        if cached is not None:
            return key, self._cached_answer(cached, arrival, started, budget_ms, level)
        self.stats.cache_lookup(False, time.monotonic() - started)
        self._metric(self.metrics.cache_lookups, self.info.name, "miss").inc()
        return key, None

    def _remember(self, key: tuple, answer: Answer) -> None:
        self.cache.put(key, answer.exit_index, answer.probs, answer.reason)
        self._metric(self.metrics.cache_bytes, self.info.name).set(self.cache.bytes)

    def _cached_answer(self, cached: Cached, arrival: float, started: float, budget_ms: float | None, level: int) -> Answer:
        """A request answered from the response cache (server/response_cache.py): counted as answered, at its exit.
        `budget_ms`: the request's, --default-budget-ms already applied (ModelEngine.classify)."""
        now = time.monotonic()
        met = budget_ms is None or now <= arrival + budget_ms / 1000
        name = self.info.name
        self.stats.cache_lookup(True, now - started)
        self.stats.answered(now - arrival, started - arrival, 0.0, cached=True)
        self._metric(self.metrics.cache_lookups, name, "hit").inc()
        self._metric(self.metrics.exits, name, str(cached.exit_index), cached.reason).inc()
        self._metric(self.metrics.request_latency, name).observe(now - arrival)
        if self.cfg.priority_levels > 1:
            self._metric(self.metrics.priority_latency, name, str(level)).observe(now - arrival)
        if not met:
            self._metric(self.metrics.budget_misses, name).inc()
        return Answer(cached.exit_index, cached.probs, cached.reason, now - arrival, met)

    def _delivered(self, job: Job, answer: Answer) -> Answer:
        """The answer as its handler resumes: its latency and budget judged now, not when its segment run ended,
        which was 0.7 ms (p50) earlier at light load and 2.4 ms saturated on a 2-core CPU (the event loop's lag,
        RESULTS §37); that lag is observed for the budget decisions of later requests (SegmentChain._decide)."""
        now = time.monotonic()
        decided = job.arrival + answer.latency_s
        answer.latency_s = now - job.arrival
        name = self.info.name
        if job.budget_end is not None:
            answer.budget_met = now <= job.budget_end
            if self.answer_lag is not None:
                self.answer_lag.observe(now - decided, now)
            if not answer.budget_met:
                self._metric(self.metrics.budget_misses, name).inc()
        self._metric(self.metrics.request_latency, name).observe(answer.latency_s)
        if self.cfg.priority_levels > 1:
            self._metric(self.metrics.priority_latency, name, str(job.priority)).observe(answer.latency_s)
        return answer

