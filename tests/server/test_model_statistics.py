"""Triton's statistics extension (server/statistics.py), read by Triton's own clients over gRPC and HTTP: the
counts follow from the requests sent, the durations add up, both protocols agree, and bad names are refused
by name."""

import time

import grpc
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.grpc import service_pb2 as triton_pb
from tritonclient.grpc import service_pb2_grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from server.client import Client
from server.statistics import ModelStatistics
from tests.server.helpers import images, png
from tests.server.v2_helpers import v2_server

MODEL = "tiny"


def test_figures_by_hand():
    s = ModelStatistics()
    s.segment_run(4, 0.002)
    s.segment_run(4, 0.001)
    s.segment_run(1, 0.0005)
    s.answered(latency_s=0.010, input_s=0.001, compute_s=0.003)
    s.failed(0.02)
    t = s.to_triton("m", "v1")
    assert (t["inference_count"], t["execution_count"]) == (1, 3)
    stats = t["inference_stats"]
    assert stats["success"] == {"count": 1, "ns": 10_000_000} and stats["fail"] == {"count": 1, "ns": 20_000_000}
    assert stats["compute_input"] == {"count": 1, "ns": 1_000_000} and stats["compute_infer"] == {"count": 1, "ns": 3_000_000}
    assert stats["queue"] == {"count": 1, "ns": 6_000_000}  # the rest of the latency
    assert stats["compute_output"] == stats["cache_hit"] == {"count": 0, "ns": 0}  # not measured / no cache
    assert [(b["batch_size"], b["compute_infer"]) for b in t["batch_stats"]] == [(1, {"count": 1, "ns": 500_000}),
                                                                                (4, {"count": 2, "ns": 3_000_000})]
    assert abs(t["last_inference"] - time.time() * 1000) < 5000


def as_ints(d):
    """gRPC's JSON writes uint64 as strings and leaves zero durations empty, Triton's HTTP writes numbers and
    zeros: compare them as numbers."""
    if isinstance(d, dict):
        return {k: as_ints(v) if v != {} else {"count": 0, "ns": 0} for k, v in d.items()}
    if isinstance(d, list):
        return [as_ints(v) for v in d]
    return int(d) if isinstance(d, str) and d.isdigit() else d


def test_statistics_follow_the_requests_through_tritons_clients(tiny_repo):
    with v2_server(tiny_repo) as (app, target, url):
        engine = app.engines[MODEL]
        before = time.time() * 1000
        with Client(target) as c:
            c.classify(png(images(1)[0]), max_exit=0)  # one segment run
            c.classify(png(images(1, seed=1)[0]))  # two: the tiny model has two exits
            c.classify_batch([png(a) for a in images(4, seed=2)])  # four images, two exits each
        after = time.time() * 1000
        via_grpc = as_ints(tgrpc.InferenceServerClient(target).get_inference_statistics(MODEL, as_json=True))
        via_http = thttp.InferenceServerClient(url).get_inference_statistics(MODEL)
        assert via_grpc == via_http
        (m,) = via_http["model_stats"]
        assert (m["name"], m["version"]) == (MODEL, engine.info.version)
        assert m["inference_count"] == 6 and before <= m["last_inference"] <= after
        # each image is a row of one run at every exit it reached: 1 x 1 + 1 x 2 + 4 x 2 rows
        assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in m["batch_stats"]) == 11
        assert m["execution_count"] == sum(b["compute_infer"]["count"] for b in m["batch_stats"]) >= 3
        s = m["inference_stats"]
        assert all(s[k]["count"] == 6 for k in ("success", "queue", "compute_input", "compute_infer"))
        assert s["fail"]["count"] == 0 and s["compute_infer"]["ns"] > 0
        parts = s["compute_input"]["ns"] + s["compute_infer"]["ns"] + s["queue"]["ns"]
        assert abs(s["success"]["ns"] - parts) <= 3 * 6  # latency = input + compute + queue (ns rounding)
        everything = thttp.InferenceServerClient(url).get_inference_statistics()  # GET /v2/models/stats
        assert [x["name"] for x in everything["model_stats"]] == [MODEL]
        assert "statistics" in thttp.InferenceServerClient(url).get_server_metadata()["extensions"]


@pytest.mark.parametrize("module", [tgrpc, thttp], ids=["grpc", "http"])
def test_unknown_models_and_versions_are_refused_by_name(tiny_repo, module):
    with v2_server(tiny_repo) as (app, target, url):
        c = module.InferenceServerClient(target if module is tgrpc else url)
        with pytest.raises(InferenceServerException) as e:
            c.get_inference_statistics("nope")
        assert "model 'nope' is not loaded" in e.value.message()
        assert e.value.status() == ("StatusCode.NOT_FOUND" if module is tgrpc else "404")
        with pytest.raises(InferenceServerException) as e:
            c.get_inference_statistics(MODEL, model_version="v999")
        assert "version 'v999' is not loaded" in e.value.message()
        if module is tgrpc:  # a version without a name: only gRPC can send it
            stub = triton_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(target))
            with pytest.raises(grpc.RpcError) as e:
                stub.ModelStatistics(triton_pb.ModelStatisticsRequest(version="1"), timeout=5)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "a model version needs a model name" in e.value.details()
