"""Per model version: what Triton's statistics extension reports (tritonclient's get_inference_statistics,
perf_analyzer's server-side figures; GET /v2/models[/NAME]/stats and the ModelStatistics RPC). Counted by the
engine on the event loop, so without locks, from the times it already takes.

What each figure counts here (an early-exit server is not Triton, so the units are said):
- inference_count, success: images answered; success.ns sums their arrival-to-answer times (the engine's
  latency, before the surface encodes the response). A request of N images counts N.
- fail: images the engine failed after admitting them (a deadline that passed in a queue, a segment run that
  raised, the model stopping), arrival to failure. Requests refused before admission (bad input, a full
  server) and requests their client cancelled are not counted.
- compute_input: arrival to the first exit's queue: reading, decoding and normalising the image.
- compute_infer: the segment runs the image took part in, summed; a batch's run counts whole for every image
  in it, as Triton counts a batch's execution for each request.
- queue: the rest of its latency: waiting in the exits' queues and the event loop's hops between them.
- compute_output: not measured (zeros): responses are built after the engine, per surface.
- execution_count: segment runs (an image answered at exit k took part in k + 1 of them); batch_stats: those
  runs by batch size, count and compute. So inference_count / execution_count is not a mean batch size here.
- cache_hit, cache_miss (with --response-cache-mb, server/response_cache.py): lookups that answered from the
  cache and the time to look up and copy the answer; lookups that missed and their lookup time. A hit also
  counts in inference_count and success (decode as compute_input, the lookup as queue), never in execution_count.
Figures are per server process (each of `--workers N` counts its own) and per loaded version: a reload starts
the new version's from zero, as Triton's are per version. The same figures go to Triton's Prometheus metrics
(server/triton_metrics.py), which sum over workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += max(0, round(seconds * 1e9))

    def to_dict(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStatistics:
    mirror: object | None = None  # server/triton_metrics.py's TritonSeries: the same figures as Prometheus metrics
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0  # wall clock, milliseconds since the epoch; 0 before the first answer
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    batches: dict[int, Duration] = field(default_factory=dict)  # segment runs by batch size: their compute
    cache_hit: Duration = field(default_factory=Duration)
    cache_miss: Duration = field(default_factory=Duration)

    def segment_run(self, batch_size: int, seconds: float) -> None:
        self.execution_count += 1
        self.batches.setdefault(batch_size, Duration()).add(seconds)
        if self.mirror is not None:
            self.mirror.exec_count.inc()

    def answered(self, latency_s: float, input_s: float, compute_s: float, cached: bool = False) -> None:
        """One image answered `latency_s` after arrival, `input_s` of it before its first queue, `compute_s` of
        it in segment runs (`cached`: from the response cache, where the lookup counts as its queue)."""
        self.inference_count += 1
        self.last_inference_ms = int(time.time() * 1000)
        queue_s = max(0.0, latency_s - input_s - compute_s)
        self.success.add(latency_s)
        self.compute_input.add(input_s)
        self.compute_infer.add(compute_s)
        self.queue.add(queue_s)
        if self.mirror is not None:
            self.mirror.answered(latency_s, input_s, compute_s, queue_s, cached)

    def cache_lookup(self, hit: bool, seconds: float) -> None:
        (self.cache_hit if hit else self.cache_miss).add(seconds)
        if self.mirror is not None:
            self.mirror.cache_lookup(hit, seconds)

    def pending(self, images: int) -> None:
        if self.mirror is not None:
            self.mirror.pending.set(images)

    def failed(self, seconds: float) -> None:
        self.fail.add(seconds)

    def to_triton(self, name: str, version: str) -> dict:
        """Triton's JSON for one model (its HTTP body's `model_stats` entry; the gRPC message's field names)."""
        zero = Duration().to_dict()
        return {"name": name, "version": version, "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count, "execution_count": self.execution_count,
                "inference_stats": {"success": self.success.to_dict(), "fail": self.fail.to_dict(),
                                    "queue": self.queue.to_dict(), "compute_input": self.compute_input.to_dict(),
                                    "compute_infer": self.compute_infer.to_dict(), "compute_output": zero,
                                    "cache_hit": self.cache_hit.to_dict(), "cache_miss": self.cache_miss.to_dict()},
                "batch_stats": [{"batch_size": size, "compute_input": zero, "compute_infer": d.to_dict(),
                                 "compute_output": zero} for size, d in sorted(self.batches.items())]}
