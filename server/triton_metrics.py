"""Triton's own Prometheus metrics (its docs/user_guide/metrics.md: nv_inference_*, nv_cache_*), beside the
auxnet_* ones on the same /metrics, so that dashboards and alerts written for Triton (its Grafana boards,
`rate(nv_inference_request_success[1m])`, queue time per request, `nv_inference_request_failure{reason}`) read
this server unchanged when it replaces a Triton.

Labels as Triton's: `model` and `version` (this server's version string, e.g. NAME-20261130T145808-...), and
`reason` on failures (REJECTED, CANCELED, BACKEND, OTHER). What each counts here, where it differs:
- nv_inference_request_success / _failure: protocol requests (a request of N images counts 1), on every surface
  (auxnet.v1, the Open Inference Protocol's gRPC and HTTP), for a loaded model; a request naming no loaded model
  has no model to count under (Triton has none either). REJECTED: refused for load (RESOURCE_EXHAUSTED);
  CANCELED: the client cancelled or its deadline passed; BACKEND: an internal error; OTHER: the rest (bad input,
  a model being unloaded, ...).
- nv_inference_count: images computed (cache hits not included, as Triton); nv_inference_exec_count: segment runs
  (an image answered at exit k took part in k + 1), so count / exec_count is not a mean batch size here.
- nv_inference_request_duration_us, _queue_duration_us (cache hits included), _compute_input_duration_us,
  _compute_infer_duration_us (not included): summed per image, with server/statistics.py's meaning of each part.
  Triton's _compute_output_duration_us is not exported: responses are built after the engine, per surface, and
  are not measured (the statistics extension reports zeros for it).
- nv_inference_pending_request_count: admitted images not yet answered (an early-exit request spends its life
  between exits; Triton counts requests waiting for a backend).
- nv_cache_num_hits_per_model, _num_misses_per_model, _hit_duration_per_model, _miss_duration_per_model (us),
  with --response-cache-mb.
One difference of form: prometheus_client writes every counter's sample with a `_total` suffix, and Triton's have
none, so these are gauges that only grow (`# TYPE ... gauge`); rate() and increase() read them as counters. Under
--workers they sum over the workers, a dead worker's counts included (multiprocess mode "sum"), as a counter's.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

MODEL_VERSION = ("model", "version")
REASONS = {"RESOURCE_EXHAUSTED": "REJECTED", "CANCELLED": "CANCELED", "DEADLINE_EXCEEDED": "CANCELED",
           "INTERNAL": "BACKEND"}  # any other failing code: OTHER


class TritonMetrics:
    def __init__(self, registry: CollectorRegistry):
        def grows(name: str, doc: str, labels=MODEL_VERSION) -> Gauge:
            return Gauge(name, doc, list(labels), registry=registry, multiprocess_mode="sum")

        self.success = grows("nv_inference_request_success", "Number of successful inference requests, all batch sizes")
        self.failure = grows("nv_inference_request_failure", "Number of failed inference requests, all batch sizes",
                             (*MODEL_VERSION, "reason"))
        self.count = grows("nv_inference_count", "Number of inferences performed (does not include cached requests)")
        self.exec_count = grows("nv_inference_exec_count",
                                "Number of model executions performed (here: segment runs; does not include cached requests)")
        self.request_us = grows("nv_inference_request_duration_us",
                                "Cumulative inference request duration in microseconds (includes cached requests)")
        self.queue_us = grows("nv_inference_queue_duration_us",
                              "Cumulative inference queuing duration in microseconds (includes cached requests)")
        self.input_us = grows("nv_inference_compute_input_duration_us",
                              "Cumulative compute input duration in microseconds (does not include cached requests)")
        self.infer_us = grows("nv_inference_compute_infer_duration_us",
                              "Cumulative compute inference duration in microseconds (does not include cached requests)")
        self.pending = Gauge("nv_inference_pending_request_count", "Instantaneous number of pending requests awaiting "
                             "execution per-model (here: admitted images not yet answered)", list(MODEL_VERSION),
                             registry=registry, multiprocess_mode="livesum")
        self.cache_hits = grows("nv_cache_num_hits_per_model", "Number of cache hits per model", ("model",))
        self.cache_misses = grows("nv_cache_num_misses_per_model", "Number of cache misses per model", ("model",))
        self.cache_hit_us = grows("nv_cache_hit_duration_per_model", "Total cache hit duration per model, in microseconds",
                                  ("model",))
        self.cache_miss_us = grows("nv_cache_miss_duration_per_model",
                                   "Total cache miss (lookup) duration per model, in microseconds", ("model",))
        self._children: dict[tuple[str, str, str], Gauge] = {}  # bounded: loaded versions x status codes

    def series(self, model: str, version: str) -> TritonSeries:
        return TritonSeries(self, model, version)

    def request(self, model: str, version: str, code: str) -> None:
        """One protocol request's outcome (server/requests.py's count, every surface)."""
        key = (model, version, code)
        child = self._children.get(key)
        if child is None:  # labels() takes a lock and builds a key each call: once per (model, version, code)
            child = self._children[key] = (self.success.labels(model, version) if code == "OK" else
                                           self.failure.labels(model, version, REASONS.get(code, "OTHER")))
        child.inc()


class TritonSeries:
    """One model version's children, looked up once: the engine updates them per image (server/statistics.py)."""

    def __init__(self, m: TritonMetrics, model: str, version: str):
        self.count, self.exec_count = m.count.labels(model, version), m.exec_count.labels(model, version)
        self.request_us, self.queue_us = m.request_us.labels(model, version), m.queue_us.labels(model, version)
        self.input_us, self.infer_us = m.input_us.labels(model, version), m.infer_us.labels(model, version)
        self.pending = m.pending.labels(model, version)
        self.cache_hits, self.cache_misses = m.cache_hits.labels(model), m.cache_misses.labels(model)
        self.cache_hit_us, self.cache_miss_us = m.cache_hit_us.labels(model), m.cache_miss_us.labels(model)
        for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER"):  # present at 0 from the load on, as Triton's
            m.failure.labels(model, version, reason)
        m.success.labels(model, version)

    def answered(self, latency_s: float, input_s: float, compute_s: float, queue_s: float, cached: bool) -> None:
        self.request_us.inc(latency_s * 1e6)
        self.queue_us.inc(queue_s * 1e6)
        if not cached:
            self.count.inc()
            self.input_us.inc(input_s * 1e6)
            self.infer_us.inc(compute_s * 1e6)

    def cache_lookup(self, hit: bool, seconds: float) -> None:
        (self.cache_hits if hit else self.cache_misses).inc()
        (self.cache_hit_us if hit else self.cache_miss_us).inc(seconds * 1e6)
