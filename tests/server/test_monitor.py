"""The agreement monitor's arithmetic, without a server (issue 13)."""

import math

import numpy as np
import pytest

from server.monitor import ADAPT_FACTOR, MIN_SCALE, ExitMonitor, cusum_threshold, monitors_from_manifest

EDGES = [0.0, 0.5, 0.9, 1.0]


def monitor(agreement=(0.6, 0.9, 0.95), false_alarm_samples=10_000):
    return ExitMonitor(EDGES, list(agreement), cusum_threshold(false_alarm_samples))


def test_expected_agreement_is_looked_up_by_confidence_bin():
    m = monitor()
    assert m.expected_agreement(0.2) == 0.6
    assert m.expected_agreement(0.5) == 0.9 and m.expected_agreement(0.89) == 0.9
    assert m.expected_agreement(0.9) == 0.95 and m.expected_agreement(1.0) == 0.95
    assert monitor((1.0, 1.0, 1.0)).expected_agreement(0.99) == 0.999  # never certain: log ratios stay finite


def test_cusum_by_hand():
    m = monitor(false_alarm_samples=3)  # h = log 3 = 1.0986
    m.recovery_window = 10
    # p = 0.9 in bin [0.5, 0.9); the alternative doubles disagreement: q = 0.8.
    up, down = math.log(0.2 / 0.1), math.log(0.8 / 0.9)
    assert m.record(False, 0.7) is None and m.cusum == pytest.approx(up)
    assert m.record(False, 0.7) == "alarm" and m.cusum == pytest.approx(2 * up) and m.alarm
    assert m.record(True, 0.7) is None and m.cusum == pytest.approx(2 * up + down)
    # Recovery: 10 samples after the alarm with agreements >= 10 * 0.9 - sqrt(10 * 0.9 * 0.1) = 8.05.
    for agreed in [False, False, True, True, True, True, True, True, True]:  # with the one above: 8 of 10
        assert m.record(agreed, 0.7) is None
    assert m.alarm  # 8 < 8.05: still drifted
    events = [m.record(True, 0.7) for _ in range(2)]  # the oldest leave: the window holds 8, then 9 agreements
    assert events == [None, "clear"] and not m.alarm and m.cusum == 0.0
    assert (m.samples, m.agreed) == (14, 10) and m.expected == pytest.approx(14 * 0.9)
    assert m.history == [(2, "alarm"), (14, "clear")]


def test_no_false_alarm_when_agreement_is_as_calibrated_and_fast_alarm_when_it_drops():
    rng = np.random.default_rng(0)
    calm = monitor((0.95, 0.95, 0.95))  # h = log 10,000: at least 10,000 samples between false alarms on average
    for _ in range(20_000):
        calm.record(bool(rng.random() < 0.95), 0.95)
    assert sum(1 for _, e in calm.history if e == "alarm") <= 2
    drifted = monitor((0.95, 0.95, 0.95))
    first = None
    for i in range(2_000):
        if drifted.record(bool(rng.random() < 0.8), 0.95) == "alarm":
            first = i + 1
            break
    # drift 0.8 * log(0.9/0.95) + 0.2 * log(0.1/0.05) = 0.095 per sample: about 9.2 / 0.095 ~ 97 samples
    assert first is not None and first < 300


def test_adaptation_raises_while_alarmed_and_lowers_back_within_bounds():
    m = monitor(false_alarm_samples=3)
    m.record(False, 0.7)
    m.record(False, 0.7)
    assert m.alarm
    steps = [m.adapt(every=2) for _ in range(30)]
    assert steps[:4] == [None, "raise", None, "raise"] and m.scale == MIN_SCALE
    assert m.effective_threshold(0.9) == pytest.approx(1 - 0.1 * MIN_SCALE)
    while m.alarm:  # a full recovery window of agreements
        m.record(True, 0.7)
    assert m.history[-1] == (2 + m.recovery_window, "clear")
    lowered = [m.adapt(every=1) for _ in range(20)]
    assert lowered.count("lower") == round(math.log(1 / MIN_SCALE, 1 / ADAPT_FACTOR)) and m.scale == 1.0
    assert m.effective_threshold(0.9) == pytest.approx(0.9)
    assert m.effective_threshold(0.2) == 0.2  # exactly, not 1 - (1 - 0.2) = 0.19999999999999996 (seen in :explain)


def test_monitors_need_agreement_tables():
    table = {"bin_edges": EDGES, "agreement": [0.5, 0.8, 0.9]}
    ms = monitors_from_manifest([{"agreement": table}, {"agreement": table}, {}], 100)
    assert len(ms) == 2 and ms[0].threshold == pytest.approx(math.log(100))
    assert monitors_from_manifest([{}, {}], 100) is None
    with pytest.raises(ValueError, match="must be more than 1 sample"):
        cusum_threshold(1)
