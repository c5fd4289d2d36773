"""Per-exit latency model: seconds to run segment k at batch size b, measured at start-up and updated
online (EWMA), used to predict whether the next segment fits a request's budget; and the recent errors of
those predictions (FinishError), whose tail is added to them."""

from __future__ import annotations

import statistics
import threading
import time

import numpy as np

EWMA_ALPHA = 0.2  # weight of a new observation


class LatencyModel:
    def __init__(self, num_exits: int, max_batch: int):
        self.max_batch = max_batch
        self.table = np.zeros((num_exits, max_batch + 1))  # table[k, b] seconds, b = 1..max_batch

    def calibrate(self, k: int, run, example: np.ndarray, repeats: int = 5) -> None:
        """Measure segment k at batch 1, 2, 4, ..., max_batch and interpolate the sizes between."""
        sizes = sorted({1, *[2**i for i in range(1, 12) if 2**i < self.max_batch], self.max_batch})
        measured = []
        for b in sizes:
            x = np.repeat(example[None], b, axis=0)
            run(x)  # warm-up: allocations, kernel choice
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                run(x)
                times.append(time.perf_counter() - t)
            measured.append(statistics.median(times))
        self.table[k, 1:] = np.interp(np.arange(1, self.max_batch + 1), sizes, measured)

    def observe(self, k: int, batch: int, seconds: float) -> None:
        b = min(batch, self.max_batch)
        self.table[k, b] = (1 - EWMA_ALPHA) * self.table[k, b] + EWMA_ALPHA * seconds

    def predict(self, k: int, batch: int) -> float:
        return float(self.table[k, max(1, min(batch, self.max_batch))])

    def predict_wait(self, k: int, queued: int, running: int) -> float:
        """Time before a request joining exit k's queue behind `queued` others starts its own batch, while a
        batch of `running` requests computes there (0: none)."""
        t = (queued // self.max_batch) * self.predict(k, self.max_batch)
        if running:  # the batch in flight finishes first; it may have just started (a budget is a promise
            t += self.predict(k, running)  # about the tail, so its whole time counts, not the average half)
        return t

    def predict_wait_and_run(self, k: int, queued: int, running: int) -> float:
        """Time for a request joining exit k's queue behind `queued` others to have its segment done."""
        return self.predict_wait(k, queued, running) + self.predict(k, queued % self.max_batch + 1)


class FinishError:
    """How late segments finish against the engine's prediction, over the last `window` requests that went on
    with a latency budget: observed finish minus predicted finish (seconds; negative = early). What the
    latency model cannot see (the event loop's and threads' scheduling delays between segments, other
    processes on the same cores) shows up here, and its `quantile` is added to every later prediction that
    decides whether a budget allows another segment: a budget promises a tail, so the correction is the
    tail of the error, not its mean. Thread-safe: segment threads observe, the deciding thread reads."""

    MIN_SAMPLES = 32  # fewer: no correction yet (a start-up guess would be noise)
    REFRESH = 16  # recompute the quantile every this many observations, not on every read
    # Observations only come from requests that went on. A margin so large that every budgeted request stops
    # would never be revised; so with no observation for this long the errors are forgotten (margin 0).
    STALE_S = 1.0

    def __init__(self, quantile: float, window: int = 256):
        self.quantile = quantile
        self.errors = np.zeros(window)
        self.count = 0
        self.margin_s = 0.0
        self.last_s = 0.0  # time.monotonic() of the last observation
        self._lock = threading.Lock()

    def observe(self, error_s: float, now: float) -> None:
        with self._lock:
            if now - self.last_s > self.STALE_S:
                self.count, self.margin_s = 0, 0.0
            self.last_s = now
            self.errors[self.count % len(self.errors)] = error_s
            self.count += 1
            if self.count >= self.MIN_SAMPLES and self.count % self.REFRESH == 0:
                self.margin_s = float(np.quantile(self.errors[:min(self.count, len(self.errors))], self.quantile))

    def margin(self, now: float) -> float:
        """Seconds to add to a finish prediction made at `now`."""
        return self.margin_s if now - self.last_s <= self.STALE_S else 0.0
