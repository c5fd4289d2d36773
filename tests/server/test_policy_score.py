"""The policy's confidence score (server/policy.py): the engine compares the calibrated policy's thresholds with
the model's score (top-1 probability, or top-1 minus top-2), and a request's min_confidence with the top-1
probability whatever the model's score is."""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest

from server.engine import ModelEngine
from server.engine_config import EngineConfig
from server.metrics import Metrics
from server.policy import CONFIDENCE, FINAL, policy_confidence
from tests.server.test_engine import fake_info

# Exit 0's calibrated probabilities by the input's first value: a near tie (top-1 0.62, margin 0.26) and a
# clear answer (top-1 0.9, margin 0.86). The final exit answers class 3.
EXIT0 = {0: [0.62, 0.36, 0.01, 0.01], 1: [0.9, 0.04, 0.03, 0.03]}


class ProbsBackend:
    def __init__(self, final: bool):
        self.final, self.name = final, "probs"

    def run(self, x):
        if self.final:
            return [np.tile(np.log([0.01, 0.01, 0.01, 0.97]).astype(np.float32), (len(x), 1))]
        logits = np.log(np.array([EXIT0[int(v)] for v in x[:, 0]], np.float32))  # temperature 1: softmax = probs
        return [x.copy(), logits]


def test_policy_confidence_by_hand():
    p = np.array([[0.62, 0.36, 0.01, 0.01], [0.1, 0.2, 0.3, 0.4]])
    np.testing.assert_allclose(policy_confidence(p, "top1"), [0.62, 0.4])
    np.testing.assert_allclose(policy_confidence(p, "margin"), [0.26, 0.1])
    with pytest.raises(ValueError, match="unknown policy score 'entropy'; known: \\['margin', 'top1'\\]"):
        policy_confidence(p, "entropy")


def engine_with(score: str | None, monitor_fraction: float = 0.0) -> ModelEngine:
    info = fake_info(2)
    agreement = {"bin_edges": [0.0, 0.5, 1.0], "agreement": [0.5, 0.9]}  # a monitor table for exit 0
    info = replace(info, exits=(replace(info.exits[0], threshold=0.6), info.exits[1]),
                   manifest={**info.manifest, "exits": [{"agreement": agreement}, {}],
                             **({"policy": {"score": score}} if score else {})})
    cfg = EngineConfig(max_batch=8, monitor_fraction=monitor_fraction)
    return ModelEngine(info, [ProbsBackend(False), ProbsBackend(True)], cfg, Metrics(), ThreadPoolExecutor(2), 2)


@pytest.mark.parametrize("score, near_tie_exit", [(None, 0), ("top1", 0), ("margin", 1)])
def test_the_policy_threshold_is_compared_with_the_models_score(score, near_tie_exit):
    async def run():
        engine = engine_with(score)
        engine.latency.table[:] = 0.001
        engine.start()
        try:
            now = time.monotonic()
            out = {}
            for v in (0, 1):
                x = np.array([v, 0.0], np.float32)
                out[v, "policy"] = await engine.classify(x, now, None, None, None, None, use_policy=True)
                out[v, "min_confidence"] = await engine.classify(x, now, None, 0.6, None, None)
            return out
        finally:
            await engine.stop()

    out = asyncio.run(run())
    # With the margin, the near tie (0.26 < 0.6) goes on to the final exit; with the top-1 probability it stops.
    assert (out[0, "policy"].exit_index, out[0, "policy"].reason) == \
        ((0, CONFIDENCE) if near_tie_exit == 0 else (1, FINAL))
    assert (out[1, "policy"].exit_index, out[1, "policy"].reason) == (0, CONFIDENCE)  # 0.86 and 0.9 both pass
    # min_confidence is the top-1 probability, whatever the model's policy score: 0.62 >= 0.6 stops.
    assert [out[v, "min_confidence"].exit_index for v in (0, 1)] == [0, 0]
    np.testing.assert_allclose(out[0, "policy"].probs, EXIT0[0] if near_tie_exit == 0 else [0.01, 0.01, 0.01, 0.97],
                               rtol=1e-5)


def test_the_monitor_samples_answers_with_the_policys_score():
    """Its agreement tables were fitted on the policy's score, so a sampled answer carries that score, also for a
    min_confidence request (which stopped on the top-1 probability)."""
    async def run():
        engine = engine_with("margin", monitor_fraction=1.0)
        engine.latency.table[:] = 0.001
        sampled = []
        engine._sample = sampled.append
        engine.start()
        try:
            now = time.monotonic()
            await engine.classify(np.array([0, 0.0], np.float32), now, None, 0.6, None, None)  # top-1 0.62 stops
            await engine.classify(np.array([1, 0.0], np.float32), now, None, None, None, None, use_policy=True)
        finally:
            await engine.stop()
        return sampled

    sampled = asyncio.run(run())
    assert [(j.exit_index, round(j.confidence, 4)) for j in sampled] == [(0, 0.26), (0, 0.86)]


def test_a_margin_policy_is_served_end_to_end(tiny_run, tiny_repo, tmp_path):
    """The tiny model's manifest rewritten to a margin policy: the real server stops a policy request at exit 0
    exactly when torch's calibrated top-1 minus top-2 there reaches the threshold, and a min_confidence request
    by the top-1 probability."""
    import json
    import shutil

    from protos.auxnet.v1 import inference_pb2 as pb
    from server.client import Client
    from tests.server.conftest import running_server
    from tests.server.helpers import images, torch_exit_logits

    model_dir = tmp_path / "repo" / "tiny"
    shutil.copytree(tiny_repo / "tiny", model_dir)
    imgs = images(16, seed=5)
    logits, temps = torch_exit_logits(tiny_run, model_dir, imgs)
    z = logits[0] / temps[0]
    p0 = np.exp(z - z.max(1, keepdims=True))
    p0 /= p0.sum(1, keepdims=True)
    margin, top1 = policy_confidence(p0, "margin"), p0.max(1)
    t = float(np.median(margin))  # half the images stop at exit 0 (ties aside)
    m = json.loads((model_dir / "manifest.json").read_text())
    m["policy"].update(score="margin", thresholds=[t, 0.0])
    (model_dir / "manifest.json").write_text(json.dumps(m))
    with running_server(tmp_path / "repo", engine=EngineConfig(max_batch=16, monitor_fraction=0.0)) as (_, target):
        with Client(target) as c:
            info = c.model_info()
            assert info.policy_score == "margin" and info.exits[0].default_threshold == pytest.approx(t)
            served = [c.classify(im, calibrated_policy=True) for im in imgs]
            by_top1 = [c.classify(im, min_confidence=float(top1[i]) - 1e-4) for i, im in enumerate(imgs)]
    assert [r.exit_index for r in served] == [0 if margin[i] >= t else 1 for i in range(len(imgs))]
    assert {r.stop_reason for r, mg in zip(served, margin) if mg >= t} == {pb.STOP_REASON_CONFIDENCE}
    assert [r.exit_index for r in by_top1] == [0] * len(imgs)  # top-1 semantics, whatever the policy's score
    assert all(r.confidence == pytest.approx(float(top1[i]), abs=1e-4) for i, r in enumerate(served) if r.exit_index == 0)
