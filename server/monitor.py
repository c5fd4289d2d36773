"""Online agreement monitor (issue 13): are early answers still what the final exit would have said?

A sampled fraction of early-exited requests is also run on to the final exit in idle time (engine.py);
each such sample says whether exit k's answer agreed with the final exit's. Calibration (export/policy.py
`agreement_table`) recorded, per exit and per confidence bin, how often they agreed on the validation split:
that is each sample's expected agreement p. The alarm is a CUSUM test (Page 1954) of "agreement as
calibrated" (p) against "the disagreement rate has doubled" (q = 1 - 2(1 - p)):

    S <- max(0, S + log(q/p))            if the sample agreed
    S <- max(0, S + log((1-q)/(1-p)))    if it did not

and the alarm is raised when S >= h = log(false_alarm_samples). Each step adds a log likelihood ratio, so
under calibrated behaviour the mean number of samples before a false alarm is at least e^h (the standard
CUSUM bound), whatever mix of confidences the traffic has; under doubled disagreement S climbs at about
KL(q || p) per sample.

Clearing needs its own test: at p = 0.985 telling "as calibrated" from "doubled disagreement" takes
thousands of samples, so waiting for S to fall back would hold an alarm long after a drift ended. The alarm
clears once the last `recovery_window` samples, all taken after it was raised, agree at least as often as
calibration predicts less one standard deviation (sum agreed >= sum p - sqrt(sum p(1-p))); S restarts at 0.

Adaptation (optional): while exit k's alarm holds, every `adapt_every` samples its calibrated policy is made
stricter by shrinking the uncertainty it accepts: a request's threshold t becomes 1 - (1 - t) * scale,
scale multiplied by ADAPT_FACTOR down to MIN_SCALE; once the alarm has cleared, scale steps back up to 1.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

P_MIN, P_MAX = 0.01, 0.999  # keep log ratios finite for bins that calibration saw as (nearly) certain
DISAGREEMENT_RATIO = 2.0  # the alternative hypothesis: disagreement twice what calibration measured
ADAPT_FACTOR = 0.5
MIN_SCALE = 1 / 64  # t = 0.9 can become at most 1 - 0.1/64 ~ 0.9984
RECOVERY_WINDOW = 64


@dataclass
class ExitMonitor:
    bin_edges: list[float]
    agreement: list[float]  # calibrated P(exit k's top-1 == final top-1) per confidence bin
    threshold: float  # h
    samples: int = 0
    agreed: int = 0
    expected: float = 0.0  # sum of p over the samples
    cusum: float = 0.0
    alarm: bool = False
    scale: float = 1.0  # adaptation: 1 = as calibrated
    since_change: int = 0
    recovery_window: int = RECOVERY_WINDOW
    history: list = field(default_factory=list)  # (samples, event) for logs and tests
    _recent: deque = field(default_factory=deque)  # (agreed, p) of samples since the alarm, the last window

    def expected_agreement(self, confidence: float) -> float:
        i = 0
        while i + 1 < len(self.agreement) and confidence >= self.bin_edges[i + 1]:
            i += 1
        return min(P_MAX, max(P_MIN, self.agreement[i]))

    def record(self, agreed: bool, confidence: float) -> str | None:
        """Add one sample; returns "alarm" or "clear" when the alarm state changes."""
        p = self.expected_agreement(confidence)
        q = max(P_MIN / 2, 1 - DISAGREEMENT_RATIO * (1 - p))
        self.samples += 1
        self.agreed += int(agreed)
        self.expected += p
        self.cusum = max(0.0, self.cusum + (math.log(q / p) if agreed else math.log((1 - q) / (1 - p))))
        if not self.alarm:
            if self.cusum >= self.threshold:
                self.alarm = True
                self._recent.clear()
                self.history.append((self.samples, "alarm"))
                return "alarm"
            return None
        self._recent.append((agreed, p))
        if len(self._recent) > self.recovery_window:
            self._recent.popleft()
        if len(self._recent) == self.recovery_window:
            hits = sum(a for a, _ in self._recent)
            mean = sum(pi for _, pi in self._recent)
            sd = math.sqrt(sum(pi * (1 - pi) for _, pi in self._recent))
            if hits >= mean - sd:
                self.alarm, self.cusum = False, 0.0
                self.history.append((self.samples, "clear"))
                return "clear"
        return None

    def adapt(self, every: int) -> str | None:
        """One adaptation step after a sample; returns "raise" or "lower" when the scale changes."""
        self.since_change += 1
        if self.since_change < every:
            return None
        if self.alarm and self.scale > MIN_SCALE:
            self.scale, self.since_change = max(MIN_SCALE, self.scale * ADAPT_FACTOR), 0
            return "raise"
        if not self.alarm and self.scale < 1.0:
            self.scale, self.since_change = min(1.0, self.scale / ADAPT_FACTOR), 0
            return "lower"
        return None

    def effective_threshold(self, threshold: float) -> float:
        if self.scale == 1.0:  # not adapted: the threshold itself (1 - (1 - 0.2) is 0.19999999999999996)
            return threshold
        return 1.0 - (1.0 - threshold) * self.scale


def cusum_threshold(false_alarm_samples: float) -> float:
    if false_alarm_samples <= 1:
        raise ValueError(f"false-alarm interval {false_alarm_samples} must be more than 1 sample")
    return math.log(false_alarm_samples)


def monitors_from_manifest(exits: list[dict], false_alarm_samples: float) -> list[ExitMonitor] | None:
    """One monitor per auxiliary exit, from the manifest's agreement tables; None when the model was exported
    without them (before issue 13)."""
    h = cusum_threshold(false_alarm_samples)
    out = []
    for e in exits[:-1]:
        table = e.get("agreement")
        if not table:
            return None
        out.append(ExitMonitor(list(table["bin_edges"]), list(table["agreement"]), h))
    return out
