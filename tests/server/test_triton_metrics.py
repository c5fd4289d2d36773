"""Triton's Prometheus metrics (server/triton_metrics.py): Triton's names and labels on /metrics, counting
requests per protocol request and images per inference, failures by Triton's reasons, durations equal to the
statistics extension's figures, cache hits apart, and summed over --workers."""

import urllib.request

import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from server.client import Client
from server.engine_config import EngineConfig
from server.triton_metrics import TritonMetrics
from tests.server.helpers import images, png
from tests.server.test_serving import metric
from tests.server.test_workers import samples, start_workers
from tests.server.v2_helpers import v2_server

MODEL = "tiny"


def test_each_failing_code_counts_under_tritons_reason():
    r = CollectorRegistry()
    m = TritonMetrics(r)
    for code in ("OK", "OK", "RESOURCE_EXHAUSTED", "CANCELLED", "DEADLINE_EXCEEDED", "INTERNAL", "INVALID_ARGUMENT",
                 "UNAVAILABLE"):
        m.request("m", "v1", code)
    assert r.get_sample_value("nv_inference_request_success", {"model": "m", "version": "v1"}) == 2
    got = {reason: r.get_sample_value("nv_inference_request_failure", {"model": "m", "version": "v1", "reason": reason})
           for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER")}
    assert got == {"REJECTED": 1, "CANCELED": 2, "BACKEND": 1, "OTHER": 2}


def test_the_metrics_follow_the_requests_and_equal_the_statistics_extension(tiny_repo):
    with v2_server(tiny_repo) as (app, target, url):
        version = app.engines[MODEL].info.version
        labels = {"model": MODEL, "version": version}
        assert metric(app, "nv_inference_request_failure", **labels, reason="REJECTED") == 0  # present from the load
        with Client(target) as c:
            c.classify(png(images(1)[0]), max_exit=0)
            c.classify_batch([png(a) for a in images(4, seed=2)])  # one request, four inferences
        client = thttp.InferenceServerClient(url)
        pixels = thttp.InferInput("pixels", [1, 32, 32, 3], "UINT8")
        pixels.set_data_from_numpy(images(1, seed=3)[0][None].astype("uint8"))
        client.infer(MODEL, [pixels])
        bad = tgrpc.InferInput("pixels", [1, 5, 3], "UINT8")  # not an image: refused, counted as OTHER
        bad.set_data_from_numpy(images(1)[0][:5, 0][None].astype("uint8"))
        with pytest.raises(Exception, match="pixels"):
            tgrpc.InferenceServerClient(target).infer(MODEL, [bad])

        assert metric(app, "nv_inference_request_success", **labels) == 3
        assert metric(app, "nv_inference_request_failure", **labels, reason="OTHER") == 1
        assert metric(app, "nv_inference_count", **labels) == 6
        stats = thttp.InferenceServerClient(url).get_inference_statistics(MODEL)["model_stats"][0]
        assert metric(app, "nv_inference_exec_count", **labels) == stats["execution_count"]
        s = stats["inference_stats"]
        for name, part in (("request", "success"), ("queue", "queue"), ("compute_input", "compute_input"),
                           ("compute_infer", "compute_infer")):
            assert metric(app, f"nv_inference_{name}_duration_us", **labels) == pytest.approx(s[part]["ns"] / 1000, abs=1), name
        assert metric(app, "nv_inference_pending_request_count", **labels) == 0
        text = urllib.request.urlopen(f"http://127.0.0.1:{app.metrics_port}/metrics", timeout=5).read().decode()
        assert "\nnv_inference_request_success{" in text  # Triton's sample name, no _total


def test_cache_hits_count_apart_from_inferences(tiny_repo):
    with v2_server(tiny_repo, engine=EngineConfig(max_batch=16, response_cache_mb=1)) as (app, target, url):
        labels = {"model": MODEL, "version": app.engines[MODEL].info.version}
        image = png(images(1)[0])
        with Client(target) as c:
            first, again = c.classify(image), c.classify(image)
        assert again.class_name == first.class_name
        assert metric(app, "nv_cache_num_hits_per_model", model=MODEL) == 1
        assert metric(app, "nv_cache_num_misses_per_model", model=MODEL) == 1
        assert metric(app, "nv_cache_hit_duration_per_model", model=MODEL) > 0
        assert metric(app, "nv_inference_request_success", **labels) == 2
        assert metric(app, "nv_inference_count", **labels) == 1  # the hit is no inference, as Triton's


@pytest.mark.slow
def test_under_workers_the_counts_add_up_over_the_workers(tiny_repo):
    proc, port, mport, _, _, _, _ = start_workers(tiny_repo)
    try:
        for i in range(8):  # new connections: the kernel spreads them over the workers
            with Client(f"127.0.0.1:{port}") as c:
                assert c.classify(png(images(1, seed=i)[0])).class_name
        assert sum(s.value for s in samples(mport, "nv_inference_request_success")) == 8
        assert sum(s.value for s in samples(mport, "nv_inference_count")) == 8
        versions = {s.labels["version"] for s in samples(mport, "nv_inference_request_success")}
        assert len(versions) == 1 and versions.pop().startswith(MODEL)
    finally:
        proc.terminate()
        assert proc.wait(60) == 0


def test_families_are_tritons_names():
    names = {f.name for f in text_string_to_metric_families(
        __import__("prometheus_client").generate_latest(_registry_with_one_series()).decode())}
    assert {"nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count", "nv_inference_exec_count",
            "nv_inference_request_duration_us", "nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us",
            "nv_inference_compute_infer_duration_us", "nv_inference_pending_request_count", "nv_cache_num_hits_per_model",
            "nv_cache_num_misses_per_model", "nv_cache_hit_duration_per_model", "nv_cache_miss_duration_per_model"} <= names


def _registry_with_one_series() -> CollectorRegistry:
    r = CollectorRegistry()
    TritonMetrics(r).series("m", "v1")
    return r
