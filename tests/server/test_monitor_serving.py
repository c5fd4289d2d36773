"""The calibrated per-exit policy and the agreement monitor in a real server (issue 13)."""

import json
import logging
import shutil

import grpc
import numpy as np
import pytest

from protos.auxnet.v1 import inference_pb2 as pb
from server.client import Client
from server.engine_config import EngineConfig
from server.monitor import MIN_SCALE
from tests.server.conftest import running_server
from tests.server.helpers import calibrated_confidence, images, torch_exit_logits, wait_for
from tests.server.test_serving import metric


def test_calibrated_policy_uses_each_exits_threshold(server, tiny_run, tiny_repo):
    app, target = server
    imgs = images(16, seed=300)
    logits, temps = torch_exit_logits(tiny_run, tiny_repo / "tiny", imgs)
    conf0 = calibrated_confidence(logits[0], temps[0])
    t0 = app.engines["tiny"].info.exits[0].threshold
    with Client(target) as c:
        assert c.model_info().exits[0].default_threshold == pytest.approx(t0)
        for i, im in enumerate(imgs):
            r = c.classify(im, calibrated_policy=True)
            assert r.exit_index == (0 if conf0[i] >= t0 else 1), (i, conf0[i], t0)
        with pytest.raises(grpc.RpcError) as e:
            c.classify(imgs[0], calibrated_policy=True, min_confidence=0.5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "set min_confidence or calibrated_policy, not both" in e.value.details()


def test_monitor_measures_agreement_in_idle_time_without_counting_requests(tiny_run, tiny_repo):
    imgs = images(40, seed=400)
    logits, _ = torch_exit_logits(tiny_run, tiny_repo / "tiny", imgs)
    agree = int((logits[0].argmax(1) == logits[1].argmax(1)).sum())
    with running_server(tiny_repo, engine=EngineConfig(max_batch=16, monitor_fraction=1.0)) as (app, target):
        with Client(target) as c:
            for im in imgs:
                assert c.classify(im, min_confidence=0.0).exit_index == 0
        assert wait_for(lambda: metric(app, "auxnet_monitor_samples_total", exit="0") == len(imgs))
        assert metric(app, "auxnet_monitor_agreements_total", exit="0") == agree
        expected = app.engines["tiny"].monitors[0].expected
        assert metric(app, "auxnet_monitor_expected_agreements_total", exit="0") == pytest.approx(expected)
        # Shadow runs are no requests: the final exit answered none, and exit 1 never ran a counted batch.
        assert metric(app, "auxnet_requests_total", code="OK") == len(imgs)
        assert metric(app, "auxnet_exits_total", exit="1") == 0
        assert metric(app, "auxnet_batch_size_count", exit="1") == 0


def drifted_copy(tiny_repo, tmp_path):
    """The tiny model with its final segment's logits rotated by one class: the final exit now disagrees with
    exit 0 wherever it used to agree, as a shift would make it, while calibration still claims agreement."""
    import onnx
    from onnx import helper, numpy_helper

    from server.repository import sha256_file

    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo / "tiny", repo / "tiny")
    final = repo / "tiny" / "exit_1.onnx"
    model = onnx.load(final)
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["logits_before" if o == "logits" else o for o in node.output]
    graph.initializer.append(numpy_helper.from_array(np.roll(np.arange(10), 1).astype(np.int64), "rotation"))
    graph.node.append(helper.make_node("Gather", ["logits_before", "rotation"], ["logits"], axis=1))
    onnx.save(model, final)
    path = repo / "tiny" / "manifest.json"
    m = json.loads(path.read_text())
    m["exits"][1]["sha256"] = sha256_file(final)
    path.write_text(json.dumps(m))
    return repo


def test_alarm_fires_and_adaptation_raises_the_threshold(tiny_repo, tmp_path, caplog):
    repo = drifted_copy(tiny_repo, tmp_path)
    imgs = images(60, seed=500)
    cfg = EngineConfig(max_batch=16, monitor_fraction=1.0, monitor_false_alarm_samples=100, monitor_adapt=True,
                       monitor_adapt_every=5)
    with caplog.at_level(logging.INFO, logger="auxnet.server"), running_server(repo, engine=cfg) as (app, target):
        t0 = app.engines["tiny"].info.exits[0].threshold
        with Client(target) as c:
            for im in imgs:
                c.classify(im, max_exit=0)  # answered at exit 0 whatever its confidence: every one is sampled
        assert wait_for(lambda: metric(app, "auxnet_monitor_samples_total", exit="0") == len(imgs))
        assert metric(app, "auxnet_monitor_alarm", exit="0") == 1
        assert metric(app, "auxnet_monitor_alarms_total", exit="0") == 1
        assert metric(app, "auxnet_monitor_threshold_changes_total", exit="0", direction="raise") >= 1
        raised = metric(app, "auxnet_exit_policy_threshold", exit="0")
        # 60 samples: the alarm within ~7, then a halving every 5 reaches the bound (6 halvings) well before the end.
        assert metric(app, "auxnet_exit_threshold_scale", exit="0") == MIN_SCALE
        assert raised == pytest.approx(1 - (1 - t0) * MIN_SCALE)
        with Client(target) as c:
            assert c.model_info().exits[0].default_threshold == pytest.approx(raised)
            # The raised threshold is the one in force for requests that follow the calibrated policy: an image
            # whose exit-0 confidence lies between the calibrated and the raised threshold now goes deeper.
            confs = [c.classify(im, max_exit=0).confidence for im in imgs]
            for im, conf in zip(imgs, confs):
                r = c.classify(im, calibrated_policy=True)
                assert r.exit_index == (0 if conf >= raised + 1e-6 else 1), (conf, t0, raised)
                assert r.stop_reason == (pb.STOP_REASON_CONFIDENCE if r.exit_index == 0 else pb.STOP_REASON_FINAL)
            assert any(t0 <= conf < raised for conf in confs), "no image tests the raise; pick other images"
        # Held back only by adaptation, those images are still sampled: the monitor keeps judging what the
        # calibrated threshold would answer. 60 + 60 answers at exit 0, then every policy request with conf >= t0.
        expected_samples = 2 * len(imgs) + sum(conf >= t0 for conf in confs)
        assert wait_for(lambda: metric(app, "auxnet_monitor_samples_total", exit="0") == expected_samples)
    alarms = [r.getMessage() for r in caplog.records if "agreement alarm: model tiny exit 0" in r.getMessage()]
    assert len(alarms) == 1 and "where calibration predicted" in alarms[0]
    assert any("adaptation: model tiny exit 0 thresholds raised" in r.getMessage() for r in caplog.records)


def test_monitor_off_for_models_exported_without_agreement_tables(tiny_repo, tmp_path, caplog):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo / "tiny", repo / "tiny")
    path = repo / "tiny" / "manifest.json"
    m = json.loads(path.read_text())
    for e in m["exits"]:
        e.pop("agreement", None)
    path.write_text(json.dumps(m))
    with caplog.at_level(logging.WARNING, logger="auxnet.server"), running_server(repo) as (app, target):
        assert app.engines["tiny"].monitors is None
        with Client(target) as c:
            assert c.classify(images(1)[0], min_confidence=0.0).exit_index == 0
    assert any("has no agreement tables" in r.getMessage() for r in caplog.records)


def test_policy_thresholds_rise_only_for_confidence_requests():
    from server.engine import ModelEngine
    from server.jobs import Job

    class Info:
        exits = [type("E", (), {"threshold": 0.9})(), type("E", (), {"threshold": 0.0})()]

    engine = ModelEngine.__new__(ModelEngine)
    engine.info, engine.last = Info(), 1
    from server.monitor import ExitMonitor

    engine.monitors = [ExitMonitor([0.0, 1.0], [0.9], 5.0, scale=0.5)]
    job = Job(np.zeros(1), 0.0, None, None, None, 1, None)
    assert engine.threshold(0, job) is None  # no confidence rule: adaptation does not invent one
    job.min_confidence = 0.8
    assert engine.threshold(0, job) == pytest.approx(0.9)
    job.use_policy = True
    assert engine.threshold(0, job) == pytest.approx(0.95)
    assert engine.threshold(1, job) == 0.0
