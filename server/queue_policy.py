"""Queue policies per priority level (Triton's dynamic batcher `default_queue_policy` and `priority_queue_policy`).

A level's policy bounds how its requests wait for their first segment (exit 0's queue: a request that has run a
segment is executing, as one in a Triton batch is):
- `max_queue_size`: at most this many of the level's requests wait there; one more is refused on arrival
  (RESOURCE_EXHAUSTED, `auxnet_rejections_total{reason="level_queue_full"}`), so a flood at one level cannot take every in-flight slot;
- `timeout_ms`: a request still waiting this long after it was queued is either refused (`reject`, Triton's
  REJECT: RESOURCE_EXHAUSTED, `auxnet_dropped_total{reason="queue_timeout"}`), or put behind every request of its level that has not
  timed out (`delay`, Triton's DELAY: still before the lower levels; served late, maybe never under a flood,
  unless its own deadline ends it first).

Given as `--queue-policy [LEVEL:]key=value,...` (repeatable): without LEVEL the default policy of every level, with
it that level's own, which replaces the default whole, as a Triton `priority_queue_policy` entry does (a key it
does not set takes the field's default, not the default policy's). Keys and defaults as Triton's: max_queue_size
(0: no bound), timeout_ms (0: none; Triton's default_timeout_microseconds), timeout_action (reject | delay).

Triton's `allow_timeout_override` has no counterpart: a request's own `timeout` parameter is always honoured here,
as a deadline for its whole answer (README, "Open Inference Protocol"), which is stricter than a queue timeout.
"""

from __future__ import annotations

from dataclasses import dataclass

ACTIONS = ("reject", "delay")
MAX_QUEUE_SIZE = 2**32 - 1  # Triton's field is a uint32: a larger one could not be stated in its model configuration


@dataclass(frozen=True)
class QueuePolicy:
    max_queue_size: int = 0  # requests of the level waiting for their first segment; 0: no bound
    timeout_ms: float = 0.0  # how long one may wait for its first segment; 0: as long as it takes
    timeout_action: str = "reject"  # what a timeout does: refuse the request, or serve it after the others

    def triton(self) -> dict:
        """The policy as a Triton model configuration's ModelQueuePolicy (protobuf JSON: 64-bit numbers as strings)."""
        return {"timeout_action": self.timeout_action.upper(),
                "default_timeout_microseconds": str(round(self.timeout_ms * 1000)),
                "allow_timeout_override": False, "max_queue_size": self.max_queue_size}


NO_POLICY = QueuePolicy()


def parse_queue_policy(spec: str) -> tuple[int | None, QueuePolicy]:
    """'2:max_queue_size=64,timeout_ms=50' -> (2, QueuePolicy(64, 50.0)); no 'LEVEL:' -> (None, the default).
    ValueError naming the part that is wrong."""
    level, sep, body = spec.partition(":")
    if not sep:
        level, body = None, spec
    else:
        try:
            level = int(level)
        except ValueError:
            raise ValueError(f"{spec!r}: the level before ':' must be a whole number (1 is the highest); got {level!r}") from None
        if level < 1:
            raise ValueError(f"{spec!r}: level {level} does not exist; levels start at 1 (the highest)")
    fields: dict = {}
    for item in body.split(","):
        key, eq, value = (part.strip() for part in item.partition("="))
        if not eq or not key or not value:
            raise ValueError(f"{spec!r}: {item.strip()!r} is not key=value (keys: max_queue_size, timeout_ms, timeout_action)")
        if key in fields:
            raise ValueError(f"{spec!r}: {key} given twice")
        fields[key] = _field(spec, key, value)
    return level, QueuePolicy(**fields)


def _field(spec: str, key: str, value: str):
    if key == "max_queue_size":
        if not value.isdigit() or int(value) > MAX_QUEUE_SIZE:
            raise ValueError(f"{spec!r}: max_queue_size must be a whole number in [0, {MAX_QUEUE_SIZE}] (0: no bound); "
                             f"got {value!r}")
        return int(value)
    if key == "timeout_ms":
        try:
            ms = float(value)
        except ValueError:
            ms = -1.0
        if not 0 <= ms <= 3_600_000:  # NaN fails this too
            raise ValueError(f"{spec!r}: timeout_ms must be a number of milliseconds in [0, 3600000] (0: none); got {value!r}")
        return ms
    if key == "timeout_action":
        if value.lower() not in ACTIONS:
            raise ValueError(f"{spec!r}: timeout_action must be one of {', '.join(ACTIONS)}; got {value!r}")
        return value.lower()
    hint = " (a request's `timeout` parameter is always honoured here, as a deadline)" if key == "allow_timeout_override" else ""
    raise ValueError(f"{spec!r}: unknown key {key!r}{hint}; keys: max_queue_size, timeout_ms, timeout_action")


@dataclass(frozen=True)
class QueuePolicies:
    """The default policy (what Triton's default_queue_policy states) and each level's (index level - 1)."""

    default: QueuePolicy
    levels: tuple[QueuePolicy, ...]

    def of(self, level: int) -> QueuePolicy:
        return self.levels[level - 1]


def level_policies(specs: list[str], levels: int) -> QueuePolicies | None:
    """--queue-policy values -> the default policy and each level's, for levels 1..levels; None when none is given.
    ValueError for a bad spec, a level above `levels`, or a level or the default given twice."""
    if not specs:
        return None
    default, own = NO_POLICY, {}
    seen_default = False
    for spec in specs:
        level, policy = parse_queue_policy(spec)
        if level is None:
            if seen_default:
                raise ValueError(f"{spec!r}: the default queue policy (no 'LEVEL:') is given twice")
            default, seen_default = policy, True
        elif level > levels:
            raise ValueError(f"{spec!r}: level {level} does not exist with --priority-levels {levels}")
        elif level in own:
            raise ValueError(f"{spec!r}: level {level}'s queue policy is given twice")
        else:
            own[level] = policy
    return QueuePolicies(default, tuple(own.get(level, default) for level in range(1, levels + 1)))
