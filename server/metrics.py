"""Prometheus metrics: base units (seconds), one prefix, counters end in _total, bounded labels (model,
exit, reason, code, surface; never a request value). One registry per server so tests can run several.

With `--workers N` (server/workers.py) every process writes its values to PROMETHEUS_MULTIPROC_DIR and the
supervisor's /metrics sums them: counters and histograms add up, and each gauge says how its processes
combine (`multiprocess_mode`; ignored with one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from server.triton_metrics import TritonMetrics

disable_created_metrics()  # no *_created series: they double the output and no dashboard reads them

PREFIX = "auxnet"
# Sub-millisecond exits need fine low buckets; budgets reach seconds.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01,
                   0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.triton = TritonMetrics(r)  # Triton's nv_inference_* names, for dashboards made for Triton
        self.requests = Counter(f"{PREFIX}_requests", "Requests (images) by final status code and the surface they came "
                                "through (auxnet.v1, v2-grpc, v2-http: the Open Inference Protocol; torchserve; kserve-v1)",
                                ["model", "surface", "code"], registry=r)
        self.exits = Counter(f"{PREFIX}_exits", "Answers by the exit that gave them and why it stopped there",
                             ["model", "exit", "reason"], registry=r)
        self.request_latency = Histogram(f"{PREFIX}_request_latency_seconds", "Arrival to answer, in the server",
                                         ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.priority_latency = Histogram(f"{PREFIX}_priority_request_latency_seconds", "Arrival to answer, in the "
                                          "server, by the request's priority level (only with --priority-levels > 1)",
                                          ["model", "priority"], buckets=LATENCY_BUCKETS, registry=r)
        self.compute_latency = Histogram(f"{PREFIX}_exit_compute_seconds", "Time to run one batch of a segment",
                                         ["model", "exit"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(f"{PREFIX}_batch_size", "Requests per segment run", ["model", "exit"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.cache_lookups = Counter(f"{PREFIX}_response_cache_lookups", "Response cache lookups (--response-cache-mb) "
                                     "by result: hit (answered from memory) or miss", ["model", "result"], registry=r)
        self.cache_bytes = Gauge(f"{PREFIX}_response_cache_bytes", "Bytes the response cache holds", ["model"],
                                 registry=r, multiprocess_mode="livesum")
        self.inline_runs = Counter(f"{PREFIX}_inline_segment_runs", "Segment runs on the event loop's thread (predicted "
                                   "within --inline-compute-ms), not handed to a segment thread", ["model", "exit"],
                                   registry=r)
        self.finish_margin = Gauge(f"{PREFIX}_finish_margin_seconds", "Added to each budget's prediction of the next "
                                   "segment's finish: recent high quantiles of how late segments finished against it and "
                                   "of how long answers then took to reach their handlers",
                                   ["model"], registry=r, multiprocess_mode="livemax")
        self.tls_expiry = Gauge(f"{PREFIX}_tls_certificate_expiry_timestamp_seconds", "When the TLS certificate in use "
                                "expires (Unix time; it is reloaded when its files change): alert well before it",
                                registry=r, multiprocess_mode="livemin")
        self.queue_depth = Gauge(f"{PREFIX}_queue_depth", "Requests waiting for a segment", ["model", "exit"],
                                 registry=r, multiprocess_mode="livesum")
        self.inflight = Gauge(f"{PREFIX}_inflight_requests", "Admitted requests not yet answered", ["model"],
                              registry=r, multiprocess_mode="livesum")
        self.budget_misses = Counter(f"{PREFIX}_budget_misses", "Answers given after their budget_ms",
                                     ["model"], registry=r)
        self.rejections = Counter(f"{PREFIX}_rejections", "Requests refused before compute",
                                  ["model", "reason"], registry=r)
        self.http_connections = Gauge(f"{PREFIX}_http_connections", "Open connections on the HTTP port", registry=r,
                                      multiprocess_mode="livesum")
        self.http_connections_refused = Counter(f"{PREFIX}_http_connections_refused", "HTTP connections closed on "
                                                "arrival: the port held --max-connections", registry=r)
        self.http_connections_idle_closed = Counter(f"{PREFIX}_http_connections_idle_closed", "HTTP connections "
                                                    "closed after --idle-timeout-s without a request", registry=r)
        self.dropped = Counter(f"{PREFIX}_dropped", "Admitted requests dropped from a queue before compute",
                               ["model", "exit", "reason"], registry=r)
        self.queue_delayed = Counter(f"{PREFIX}_queue_delayed", "Requests put behind their level's others when their "
                                     "queue policy's timeout passed (timeout_action delay)", ["model"], registry=r)
        # A gauge at 1 rather than an Info: Info does not work across processes. Same series name and labels.
        self.model_info = Gauge(f"{PREFIX}_model_info", "Loaded model", ["model", "version", "architecture", "exits",
                                                                         "backend", "precision", "policy_score"],
                                registry=r,
                                multiprocess_mode="livemax")
        self.model_memory = Gauge(f"{PREFIX}_model_memory_estimate_bytes", "What a loaded model version is estimated to "
                                  "hold (the figure a load is checked against: server/load_memory.py), summed over "
                                  "--workers' copies", ["model", "version"], registry=r, multiprocess_mode="livesum")
        self.model_device_memory = Gauge(f"{PREFIX}_model_device_memory_estimate_bytes", "What a loaded model version "
                                         "is estimated to hold of the GPU's memory where its sessions run on one (the "
                                         "figure a load is checked against: server/load_memory.py), summed over "
                                         "--workers' copies", ["model", "version"], registry=r, multiprocess_mode="livesum")
        self.grpc_failed_batches = Counter(f"{PREFIX}_grpc_failed_batches", "grpc batches that failed on calls whose "
                                           "client had just left (logged by grpc as ExecuteBatchError; server/grpc_log.py)",
                                           ["method"], registry=r)
        self.reloads = Counter(f"{PREFIX}_model_reloads", "New model versions seen: loaded, or refused",
                               ["model", "result"], registry=r)
        self.shm_regions = Gauge(f"{PREFIX}_shared_memory_regions", "System shared memory regions clients have "
                                 "registered (--allow-client-shm; server/shared_memory.py)", registry=r,
                                 multiprocess_mode="livesum")
        self.shm_bytes = Gauge(f"{PREFIX}_shared_memory_bytes", "Bytes of the registered shared memory regions",
                               registry=r, multiprocess_mode="livesum")
        self.model_control = Counter(f"{PREFIX}_model_control", "Loads and unloads asked through Triton's repository "
                                     "API, or by the repository's membership in poll mode (server/model_control.py): "
                                     "done, or refused", ["model", "action", "result"],
                                     registry=r)
        self.otlp_spans = Counter(f"{PREFIX}_otlp_spans", "Request trace spans for the OpenTelemetry collector "
                                  "(--trace-mode opentelemetry; server/otlp_export.py) by outcome: exported, queue_full, "
                                  "rejected (a status not to retry, or the collector's partial success), failed (retries "
                                  "ran out), shutdown", ["outcome"], registry=r)
        self.shared_change_failures = Counter(f"{PREFIX}_shared_change_failures", "Changes shared by --workers "
                                              "processes that this worker could not apply (server/worker_sync.py), "
                                              "by kind: model or shm", ["kind"], registry=r)
        self.latency_estimate = Gauge(f"{PREFIX}_exit_latency_estimate_seconds",
                                      "Latency model: one segment run at batch 1", ["model", "exit"], registry=r,
                                      multiprocess_mode="livemax")
        # Agreement monitor (server/monitor.py): early answers also run to the final exit in idle time.
        self.monitor_samples = Counter(f"{PREFIX}_monitor_samples", "Early answers also run to the final exit in idle time",
                                       ["model", "exit"], registry=r)
        self.monitor_agreements = Counter(f"{PREFIX}_monitor_agreements", "Monitored early answers equal to the final exit's",
                                          ["model", "exit"], registry=r)
        self.monitor_expected = Counter(f"{PREFIX}_monitor_expected_agreements",
                                        "Sum over monitored answers of the agreement calibration predicted for them",
                                        ["model", "exit"], registry=r)
        self.monitor_skipped = Counter(f"{PREFIX}_monitor_skipped", "Sampled early answers not monitored: queue full",
                                       ["model"], registry=r)
        self.monitor_cusum = Gauge(f"{PREFIX}_monitor_cusum", "CUSUM of disagreement evidence; alarm at its threshold",
                                   ["model", "exit"], registry=r, multiprocess_mode="livemax")
        self.monitor_alarm = Gauge(f"{PREFIX}_monitor_alarm", "1 while the exit's agreement is below its calibrated value",
                                   ["model", "exit"], registry=r, multiprocess_mode="livemax")
        self.monitor_alarms = Counter(f"{PREFIX}_monitor_alarms", "Agreement alarms raised", ["model", "exit"], registry=r)
        self.threshold_scale = Gauge(f"{PREFIX}_exit_threshold_scale",
                                     "Online adaptation: uncertainty a confidence threshold accepts, times this (1 = calibrated)",
                                     ["model", "exit"], registry=r, multiprocess_mode="livemin")
        self.policy_threshold = Gauge(f"{PREFIX}_exit_policy_threshold",
                                      "The calibrated policy's confidence threshold in force (after adaptation)",
                                      ["model", "exit"], registry=r, multiprocess_mode="livemax")
        self.threshold_changes = Counter(f"{PREFIX}_monitor_threshold_changes", "Adaptation steps, by direction",
                                         ["model", "exit", "direction"], registry=r)
