"""The exit rule of DESIGN.md, as one pure function so it can be tested without a server."""

from __future__ import annotations

import numpy as np

CONFIDENCE, BUDGET, FINAL, MAX_EXIT = "confidence", "budget", "final", "max_exit"
# Not a stop: the answer of an exit a progressive request passed on its way deeper (server/jobs.py, Job.progress).
CONTINUED = "continued"
REASONS = (CONFIDENCE, BUDGET, FINAL, MAX_EXIT)

# What the calibrated policy's thresholds are compared with (the manifest's policy.score; absent = "top1").
# Export fits both and serves the cheaper on validation (export/policy.py): on a self-distilled AuxNet-56-5 the
# margin is 8% cheaper at the same promise (RESULTS §21), where its exits are as accurate as the final one and
# the top-1 probability alone cannot tell a confident answer from a near tie. A request's own min_confidence is
# always the top-1 probability, what the response reports.
POLICY_SCORES = {"top1": "the calibrated top-1 probability",
                 "margin": "the calibrated top-1 probability minus the second"}


def policy_confidence(probs: np.ndarray, score: str) -> np.ndarray:
    """(N,) the policy's score of each row of calibrated probabilities (N, classes), in [0, 1]."""
    if score == "top1":
        return probs.max(axis=1)
    if score == "margin":
        top2 = np.partition(probs, probs.shape[1] - 2, axis=1)[:, -2:]
        return top2[:, 1] - top2[:, 0]
    raise ValueError(f"unknown policy score {score!r}; known: {sorted(POLICY_SCORES)}")


def stop_reason(exit_index: int, last_exit: int, max_exit: int, confidence: float, min_confidence: float | None,
                now: float, next_finish_estimate: float, budget_end: float | None) -> str | None:
    """Why a request that has just computed `exit_index` stops there, or None to go on.

    Checked in order: the final exit; the request's max_exit; calibrated confidence >= min_confidence;
    the next segment predicted to finish after the budget (arrival + budget_ms, or the gRPC deadline)."""
    if exit_index >= last_exit:
        return FINAL
    if exit_index >= max_exit:
        return MAX_EXIT
    if min_confidence is not None and confidence >= min_confidence:
        return CONFIDENCE
    if budget_end is not None and now + next_finish_estimate > budget_end:
        return BUDGET
    return None
