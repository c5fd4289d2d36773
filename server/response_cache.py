"""A response cache for one model version (Triton's response cache, `--response-cache-mb`): an image seen again
with the same exit rule is answered from memory, without queueing or computing.

What may be cached is what a new request would be answered anyway: answers that stopped on confidence, at the
final exit or at their `max_exit`, which depend only on the image and the rule (its min_confidence or the
calibrated policy, and max_exit). Never an answer that stopped on its budget: that depended on the load of its
moment, and a later request with more time must get the deeper answer. A cached answer is served to a request
with any budget: it costs no compute, so every budget allows it. The monitor's adaptation changes thresholds, so
its current scales are part of the key: an answer cached under other thresholds is never served. The key hashes
the decoded, normalised input (so every surface and encoding of the same pixels shares entries). Progressive
requests (every exit's answer) bypass it.

Bounded by bytes (each entry counted as its probabilities plus ENTRY_OVERHEAD), least recently used first out.
On the event loop only.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from server.policy import CONFIDENCE, FINAL, MAX_EXIT

CACHEABLE = (CONFIDENCE, FINAL, MAX_EXIT)
# Bytes per entry beyond its probabilities' data: the key (digest, shape, scales, the tuple), the entry, the array's
# header, the ordered dict's slot; tracemalloc measured 413-563 B in all with 10 classes (the test holds the
# estimate at or above what it measures).
ENTRY_OVERHEAD = 560


@dataclass(frozen=True)
class Cached:
    exit_index: int
    probs: np.ndarray  # calibrated, read-only
    reason: str


class ResponseCache:
    def __init__(self, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError(f"response cache size {max_bytes} bytes must be positive")
        self.max_bytes = max_bytes
        self.bytes = 0
        self.entries: OrderedDict[tuple, Cached] = OrderedDict()
        self.hits = self.misses = self.evictions = 0

    @staticmethod
    def key(x: np.ndarray, use_policy: bool, min_confidence: float | None, max_exit: int, scales: tuple) -> tuple:
        """The input's digest and everything else the answer depends on."""
        digest = hashlib.blake2b(np.ascontiguousarray(x).view(np.uint8), digest_size=16).digest()
        return digest, x.shape, use_policy, min_confidence, max_exit, scales

    def get(self, key: tuple) -> Cached | None:
        entry = self.entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: tuple, exit_index: int, probs: np.ndarray, reason: str) -> None:
        if reason not in CACHEABLE or key in self.entries:
            return
        probs = np.array(probs, copy=True)
        probs.flags.writeable = False  # shared by every request it answers
        size = probs.nbytes + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return
        self.entries[key] = Cached(exit_index, probs, reason)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self.entries.popitem(last=False)
            self.bytes -= old.probs.nbytes + ENTRY_OVERHEAD
            self.evictions += 1
