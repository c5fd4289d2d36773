"""bench/policy_coverage.py: each draw calibrates on its own images and is judged only on the rest."""

import numpy as np
import pytest

from bench.policy_coverage import one_draw, pooled
from export.calibration import fit_temperature, softmax
from export.policy import ExitScores, choose_policy, evaluate, fresh_set_miss_rate, served_rule


def synthetic(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Three exits' logits over 4 classes, the deeper more often right."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    logits = []
    for strength in (1.0, 2.0, 3.5):
        z = rng.normal(size=(n, 4))
        z[np.arange(n), labels] += strength
        logits.append(z)
    return logits, labels


def test_pooled_puts_validation_first():
    d = {"val_logits_0": np.zeros((2, 3)), "val_logits_1": np.ones((2, 3)), "val_labels": np.array([0, 1]),
         "test_logits_0": np.full((3, 3), 5.0), "test_logits_1": np.full((3, 3), 6.0), "test_labels": np.array([2, 2, 2])}
    logits, labels, n_val = pooled(d)
    assert n_val == 2 and labels.tolist() == [0, 1, 2, 2, 2] and len(logits) == 2
    assert logits[1][:2].tolist() == [[1.0] * 3] * 2 and logits[0][2:].tolist() == [[5.0] * 3] * 3


def test_one_draw_is_exports_choice_on_the_calibration_images_judged_on_the_rest():
    logits, labels = synthetic(1200, 3)
    calib, unseen = np.arange(600), np.arange(600, 1200)
    mflops = [10.0, 20.0, 40.0]
    r = one_draw(logits, labels, calib, unseen, mflops, 0.01, "top1", 0.9)
    temps = [fit_temperature(z[calib], labels[calib]) for z in logits]
    probs = [softmax(z / t) for z, t in zip(logits, temps)]
    chosen = choose_policy([p[calib] for p in probs], labels[calib], mflops, 0.01, confidence=0.9)
    rule = chosen[served_rule(chosen)]
    assert r["thresholds"] == rule["thresholds"][:-1] and r["held_out_se"] == rule["held_out"]["drop_se"]
    judged = evaluate(ExitScores.from_probs([p[unseen] for p in probs], labels[unseen]), rule["thresholds"], mflops)
    assert r["unseen_drop"] == pytest.approx(judged["drop"]) and r["unseen_mflops"] == pytest.approx(judged["mean_mflops"])
    assert r["unseen_se"] > 0 and r["kept_in_cv"]
    calib_scores = ExitScores.from_probs([p[calib] for p in probs], labels[calib])
    assert r["predicted_miss"] == fresh_set_miss_rate(calib_scores, rule["thresholds"], rule["held_out"]["drop"], 0.01, 600)
