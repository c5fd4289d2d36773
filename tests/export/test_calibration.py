import numpy as np
import pytest

from export.calibration import cascade, default_policy, fit_temperature, nll, softmax, threshold_table


@pytest.mark.parametrize("planted", [0.5, 1.0, 2.5])
def test_planted_temperature_is_recovered(planted):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (20000, 10))
    # Labels drawn from softmax(logits / planted): the NLL-optimal temperature is `planted`.
    p = softmax(logits / planted)
    labels = (p.cumsum(1) > rng.random((len(p), 1))).argmax(1)
    assert fit_temperature(logits, labels) == pytest.approx(planted, rel=0.05)
    assert nll(logits, labels, planted) < nll(logits, labels, planted * 1.5)


def test_threshold_table_by_hand():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 0])
    rows = {r["threshold"]: r for r in threshold_table(probs, labels)}
    assert rows[0.0] == {"threshold": 0.0, "accuracy": 0.75, "exit_rate": 1.0}
    assert rows[0.6] == {"threshold": 0.6, "accuracy": 0.66667, "exit_rate": 0.75}  # 0.9, 0.7 right; 0.6 wrong
    assert rows[0.7] == {"threshold": 0.7, "accuracy": 1.0, "exit_rate": 0.5}
    assert rows[0.95] == {"threshold": 0.95, "accuracy": 1.0, "exit_rate": 0.0}


def test_cascade_and_policy_by_hand():
    shallow = np.array([[0.95, 0.05], [0.6, 0.4], [0.4, 0.6]])
    final = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9]])
    labels = np.array([0, 1, 1])
    r = cascade([shallow, final], labels, [0.9, 0.0], [10.0, 30.0])
    assert r == {"accuracy": 1.0, "mean_mflops": pytest.approx((10 + 30 + 30) / 3), "exit_rates": [0.33333, 0.66667]}
    policy = default_policy([shallow, final], labels, [10.0, 30.0])
    # t=0.6 would stop image 1 at the shallow exit, wrongly; 0.65 is the lowest grid value that keeps 100%.
    assert policy["thresholds"] == [0.65, 0.0] and policy["val_accuracy"] == 1.0
