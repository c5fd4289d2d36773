"""The engine's settings (server/engine.py): one frozen dataclass, each default with the reason for it."""

from __future__ import annotations

from dataclasses import dataclass

from server.queue_policy import QueuePolicies


@dataclass(frozen=True)
class EngineConfig:
    max_batch: int = 32
    max_queue_delay_ms: float = 0.0  # extra wait for a fuller batch; 0 = batch only what is waiting
    max_inflight: int = 256  # admitted, unanswered requests; more get RESOURCE_EXHAUSTED at once
    # Shed a request at admission when the predicted wait in exit 0's queue already passes its budget
    # (always done for the gRPC deadline, a hard limit). Off by default: DESIGN.md answers a too-small
    # budget from exit 0 with budget_met = false; under overload, shedding keeps accepted budgets.
    shed_late_budgets: bool = False
    # Agreement monitor (server/monitor.py): this fraction of early answers is also run on to the final exit
    # when every exit queue is idle, and compared with it; 0 turns it off.
    monitor_fraction: float = 0.05
    monitor_false_alarm_samples: float = 10_000  # CUSUM: mean samples between false alarms is at least this
    monitor_adapt: bool = False  # raise an alarmed exit's thresholds, lower them back once it clears
    monitor_adapt_every: int = 20  # samples at that exit between two adaptation steps
    monitor_queue: int = 256  # sampled answers waiting for idle time; more are skipped (counted)
    # A request with neither budget nor gRPC deadline is queued as if due this long after arrival: earliest
    # deadline first would otherwise put it behind every request that has one, forever under load.
    undeadlined_due_ms: float = 1000.0
    # The budget of a request that sets none (0 = none): it is then answered as if it had sent budget_ms, from
    # the deepest exit that fits, so that under load such requests come back early rather than queue until
    # shed. Triton's analogue is a model's default queue timeout; here the answer is shallower, not refused.
    default_budget_ms: float = 0.0
    # Keep features in the backend's memory along a chain of segments (IOBinding, issue 12). "auto": only
    # where that memory is a device's; on CPU the features are host arrays anyway and binding costs ~5%.
    io_binding: bool | str = "auto"
    # A segment run the latency model predicts at most this long runs on the event loop's own thread, not a
    # segment thread: no hand-off there and back, 20-44% less server CPU per image when runs are short (an
    # accelerator's), but the loop serves no I/O while it waits for the run, so one process's throughput drops
    # unless runs are far shorter than its per-batch work (bench/RESULTS.md §14). For when cores are the limit
    # (several --workers). An inline chain stops before a segment that would take it past this limit. 0 (the
    # default): every run goes to a segment thread.
    inline_compute_ms: float = 0.0
    # Add to each "does the next segment fit the budget" prediction this quantile of how late segments have
    # recently finished against their prediction (server/latency.py FinishError); 0 turns the correction off.
    finish_margin_quantile: float = 0.9
    # Answer an image seen again with the same exit rule from memory (server/response_cache.py, Triton's response
    # cache); at most this many MB per model version. 0: off.
    response_cache_mb: float = 0.0
    # A batch in which some requests stop and the rest go on, with the next exit idle and nobody waiting: run
    # the next segment on the whole batch in place (the stopped requests' rows as padding, their answers sent
    # at once) instead of copying every request's features to the host and queueing the rest. "auto": only
    # where features live in a device's memory, where a few more rows cost little and a copy costs much; on
    # a CPU a row costs its full compute.
    carry_stopped_rows: bool | str = "auto"
    # Priority levels (Triton's dynamic batcher `priority_levels` and the request parameter `priority`: 1 is the
    # highest). Each exit's queue serves a higher level first (then earliest deadline first), strictly, as
    # Triton does: a lower level waits while higher ones keep it busy. At max_inflight a request evicts a
    # queued lower-level one from exit 0 instead of being refused. 1 (the default): no priorities.
    priority_levels: int = 1
    default_priority_level: int = 0  # the level of a request that sends none (or 0); 0 here means the lowest
    # Each level's queue policy (server/queue_policy.py, Triton's default/priority_queue_policy): a bound on its
    # requests waiting for exit 0 and a timeout on that wait. None (the default): no bound, no timeout.
    queue_policies: QueuePolicies | None = None
