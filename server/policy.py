"""The exit rule of DESIGN.md, as one pure function so it can be tested without a server."""

from __future__ import annotations

CONFIDENCE, BUDGET, FINAL, MAX_EXIT = "confidence", "budget", "final", "max_exit"
REASONS = (CONFIDENCE, BUDGET, FINAL, MAX_EXIT)


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
