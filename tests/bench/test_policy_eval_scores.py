"""The confidence scores bench/policy_eval.py --compare-scores sets beside each other, by hand."""

import numpy as np
import pytest

from bench.policy_eval import score_variants


def test_each_score_by_hand():
    exit0 = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    exit1 = np.array([[0.1, 0.1, 0.8], [0.2, 0.7, 0.1]])
    labels = np.array([2, 1])
    v = score_variants([exit0, exit1], labels)
    top1 = v["calibrated top-1 probability"]
    np.testing.assert_allclose(top1.conf, [[0.5, 0.6], [0.8, 0.7]])
    assert top1.correct.tolist() == [[False, True], [True, True]]
    np.testing.assert_allclose(v["top-1 minus top-2 probability"].conf, [[0.2, 0.3], [0.7, 0.5]])
    # 1 + sum p ln p / ln 3, e.g. 1 - (0.5 ln 2 + 0.3 ln(1/0.3) + 0.2 ln 5) / ln 3 = 0.06277
    np.testing.assert_allclose(v["1 - normalised entropy"].conf[0, 0], 0.06277, atol=1e-5)
    np.testing.assert_allclose(v["1 - normalised entropy"].conf[1, 0], 1 - (0.2 * np.log(10) + 0.8 * np.log(1.25)) / np.log(3))
    # The ensemble: at exit 0 it is exit 0 itself; the final exit answers alone, as served.
    ens = v["ensemble of the exits so far, its top-1"]
    np.testing.assert_allclose(ens.conf, [[0.5, 0.6], [0.8, 0.7]])


def test_the_ensemble_averages_log_probabilities_before_the_final_exit():
    a = np.array([[0.6, 0.4]])
    b = np.array([[0.2, 0.8]])
    final = np.array([[0.9, 0.1]])
    ens = score_variants([a, b, final], np.array([0]))["ensemble of the exits so far, its top-1"]
    # Exit 1: softmax of (ln a + ln b) / 2 = sqrt(a b) normalised: sqrt(.12) / (sqrt(.12) + sqrt(.32)) for class 0.
    p0 = np.sqrt(0.12) / (np.sqrt(0.12) + np.sqrt(0.32))
    assert ens.conf[1, 0] == pytest.approx(1 - p0) and ens.pred[1, 0] == 1 and not ens.correct[1, 0]
    assert ens.conf[2, 0] == pytest.approx(0.9) and ens.correct[2, 0]  # the final exit's own answer
