import itertools

import numpy as np
import pytest

from export.policy import (
    GRID,
    NEVER,
    ExitScores,
    agreement_table,
    best_shared_threshold,
    choose_policy,
    conditional_table,
    cross_validated,
    drop_standard_error,
    evaluate,
    fresh_set_miss_rate,
    halves,
    held_out_folds,
    held_out_standard_error,
    optimise_thresholds,
    paired_drop,
    served_rule,
    served_score,
    stop_exits,
    z_score,
)

MFLOPS = [10.0, 20.0, 40.0]


def planted() -> ExitScores:
    """Three exits, 1,000 images, the final exit always right. Group A (300): exit 0 sure (0.97) and right.
    Group D (200): exit 0 confidently wrong (0.9), exit 1 right at 0.75. Group C (500): both auxiliary exits
    unsure (0.5 / 0.6) and right half the time. With no drop allowed the optimum is known by hand:
    t0 in (0.9, 0.97], t1 in (0.6, 0.75] (ties go to the higher threshold: 0.97 and 0.75),
    cost 0.3*10 + 0.2*20 + 0.5*40 = 27 MFLOPs. A shared threshold must exceed 0.9 for exit 0's sake, which
    sends group D past exit 1 to the final exit: 0.3*10 + 0.7*40 = 31."""
    conf = np.zeros((3, 1000))
    correct = np.ones((3, 1000), dtype=bool)
    a, d, c = slice(0, 300), slice(300, 500), slice(500, 1000)
    conf[0, a], conf[0, d], conf[0, c] = 0.97, 0.9, 0.5
    conf[1, a], conf[1, d], conf[1, c] = 0.99, 0.75, 0.6
    conf[2] = 0.99
    correct[0, d] = False
    correct[0, 500:750] = False
    correct[1, 500:750] = False
    pred = np.where(correct, 0, 1)
    return ExitScores(conf, correct, pred)


def test_planted_optimum_is_found():
    s = planted()
    t = optimise_thresholds(s, MFLOPS, max_drop=0.0)
    assert t == [0.97, 0.75]
    r = evaluate(s, [*t, 0.0], MFLOPS)
    assert r["drop"] == 0.0 and r["mean_mflops"] == pytest.approx(27.0)
    shared = best_shared_threshold(s, MFLOPS, 0.0)
    assert shared == [0.91, 0.91]  # the lowest grid value above exit 0's confidently wrong 0.9
    assert evaluate(s, [*shared, 0.0], MFLOPS)["mean_mflops"] == pytest.approx(31.0)


def random_scores(n: int, seed: int) -> ExitScores:
    """Three exits whose confidence is informative: deeper exits are more often right."""
    rng = np.random.default_rng(seed)
    skill = rng.random(n)
    conf, correct = [], []
    for depth in (0.3, 0.6, 1.0):
        c = np.clip(skill * depth + rng.normal(0, 0.15, n) + 0.1, 0.11, 0.999)
        conf.append(c)
        correct.append(rng.random(n) < 0.3 + 0.7 * c)
    correct = np.array(correct)
    return ExitScores(np.array(conf), correct, np.where(correct, 0, 1))


@pytest.mark.parametrize("seed,drop", [(0, 0.005), (1, 0.01), (2, 0.02)])
def test_coordinate_descent_matches_brute_force(seed, drop):
    s = random_scores(1500, seed)
    best = min((evaluate(s, [t0, t1, 0.0], MFLOPS)["mean_mflops"], (t0, t1)) for t0, t1 in itertools.product(GRID, GRID)
               if evaluate(s, [t0, t1, 0.0], MFLOPS)["drop"] <= drop + 1e-12)
    t = optimise_thresholds(s, MFLOPS, drop)
    r = evaluate(s, [*t, 0.0], MFLOPS)
    assert r["drop"] <= drop + 1e-12
    assert r["mean_mflops"] == pytest.approx(best[0], abs=1e-9)
    shared = evaluate(s, [*best_shared_threshold(s, MFLOPS, drop), 0.0], MFLOPS)
    assert r["mean_mflops"] <= shared["mean_mflops"] + 1e-9


def test_stop_exits_and_evaluate_by_hand():
    conf = np.array([[0.95, 0.5, 0.5], [0.9, 0.9, 0.5], [0.1, 0.1, 0.1]])
    correct = np.array([[True, False, False], [True, True, False], [True, True, True]])
    s = ExitScores(conf, correct, np.where(correct, 0, 1))
    assert stop_exits(s, [0.9, 0.9]).tolist() == [0, 1, 2]
    r = evaluate(s, [0.9, 0.9, 0.0], MFLOPS)
    assert r["accuracy"] == 1.0 and r["mean_mflops"] == pytest.approx((10 + 20 + 40) / 3)
    assert stop_exits(s, [NEVER, NEVER]).tolist() == [2, 2, 2]


def test_conditional_table_counts_only_inputs_that_reach_the_exit():
    s = planted()
    # Under t0 = 0.97 group A (300) leaves at exit 0; 700 reach exit 1: group D at 0.75 (all right) and
    # group C at 0.6 (half right).
    table = conditional_table(s, [0.97, 0.75, 0.0], 1)
    rows = {r["threshold"]: r for r in table["rows"]}
    assert table["reach_rate"] == 0.7
    assert rows[0.7] == {"threshold": 0.7, "exit_rate": round(200 / 700, 5), "accuracy": 1.0}
    assert rows[0.6] == {"threshold": 0.6, "exit_rate": 1.0, "accuracy": round(450 / 700, 5)}
    assert rows[0.8]["exit_rate"] == 0.0 and rows[0.8]["accuracy"] is None
    # The unconditional view of exit 1 would count group A (right at 0.99) too.
    everyone = {r["threshold"]: r for r in conditional_table(s, [NEVER, NEVER, 0.0], 1)["rows"]}
    assert everyone[0.99]["exit_rate"] == 0.3 and rows[0.99]["exit_rate"] == 0.0


def test_agreement_table_by_hand():
    s = planted()
    t = agreement_table(s, 0, [0.97, 0.75, 0.0])
    edges = t["bin_edges"]
    i97, i90, i50 = (edges.index(e) for e in (0.95, 0.9, 0.5))
    # exit 0 agrees with the final exit exactly where it is right: A yes (300), D no (200), C half (250 of 500).
    assert t["count"][i97] == 300 and t["agreement"][i97] == pytest.approx(301 / 302, abs=1e-5)
    assert t["count"][i90] == 200 and t["agreement"][i90] == pytest.approx(1 / 202, abs=1e-5)
    assert t["count"][i50] == 500 and t["agreement"][i50] == pytest.approx(251 / 502, abs=1e-5)
    assert t["policy_agreement"] == 1.0  # the policy answers only group A at exit 0


def test_cross_validation_margin_keeps_the_promise_on_the_held_out_half():
    s = random_scores(2000, 7)
    cv = cross_validated(s, MFLOPS, 0.005, optimise_thresholds, seed=0)
    assert len(cv["folds"]) == 10 and cv["kept"]
    assert cv["held_out"]["drop"] == pytest.approx(np.mean([f["drop"] for f in cv["folds"]]))
    assert cv["held_out"]["drop"] <= 0.005 + 1e-12
    # Without the margin, thresholds chosen on one half overfit it and lose more than promised on the other.
    assert cv["margin"] > 0
    splits = [halves(s.n, r) for r in range(5)]
    at_zero = np.mean([f["drop"] for f in held_out_folds(s, MFLOPS, 0.005, optimise_thresholds, splits)])
    assert at_zero > 0.005


def test_choose_policy_reports_both_rules():
    s = random_scores(3000, 3)
    probs = []
    for k in range(3):  # ten-class probabilities whose top-1 is the planted prediction at the planted confidence
        p = np.repeat(((1 - s.conf[k]) / 9)[:, None], 10, axis=1)
        p[np.arange(s.n), s.pred[k]] = s.conf[k]
        probs.append(p)
    labels = np.zeros(s.n, dtype=int)
    out = choose_policy(probs, labels, MFLOPS, 0.005)
    for rule in ("per_exit", "shared"):
        assert out[rule]["thresholds"][-1] == 0.0 and len(out[rule]["thresholds"]) == 3
        assert out[rule]["held_out"]["drop"] <= 0.005 + 1e-9
    assert out["shared"]["thresholds"][0] == out["shared"]["thresholds"][1]
    assert out["per_exit"]["mean_mflops"] <= out["shared"]["mean_mflops"] + 1e-6
    for rule in ("per_exit", "shared"):  # the miss rate of the rule's own thresholds and held-out drop
        scores = ExitScores.from_probs(probs, labels)
        expected = fresh_set_miss_rate(scores, out[rule]["thresholds"], out[rule]["held_out"]["drop"], 0.005)
        miss = out[rule]["fresh_set_miss_rate"]  # the reported held-out drop is rounded to 5 places: so is this input
        assert miss["images"] == 10_000 and miss["rate"] == pytest.approx(expected, abs=2e-3) and 0 < miss["rate"] < 1


def tied_scores(n: int, seed: int, gap: float) -> ExitScores:
    """Three exits: exit 0 useless and never confident; exit 1 `gap` less accurate than the final exit, right
    or wrong independently of it, its confidence uninformative (0.8-1.0): as with a self-distilled model,
    whose deep auxiliary exit ties the final one, any subset it answers looks as good as the final exit on
    some half of the split by chance."""
    rng = np.random.default_rng(seed)
    correct = np.stack([rng.random(n) < 0.5, rng.random(n) < 0.88 - gap, rng.random(n) < 0.88])
    conf = np.stack([rng.uniform(0, 0.3, n), rng.uniform(0.8, 1.0, n), np.full(n, 0.99)])
    return ExitScores(conf, correct, np.where(correct, 0, 1))


def test_margin_may_exceed_the_promised_drop_when_tying_the_final_exit_overfits():
    s = tied_scores(2000, 3, 0.015)
    cv = cross_validated(s, MFLOPS, 0.005, optimise_thresholds, seed=0)
    # Thresholds chosen to merely tie the final exit on one half (margin = max_drop, the old cap) still lose
    # more than 0.5 pp on the other half; they must beat it there, and then the promise holds held out.
    splits = [halves(s.n, r) for r in range(5)]
    at_tie = np.mean([f["drop"] for f in held_out_folds(s, MFLOPS, 0.0, optimise_thresholds, splits)])
    assert at_tie > 0.005
    assert cv["margin"] > 0.005 and cv["kept"]
    assert cv["held_out"]["drop"] <= 0.005 + 1e-12
    assert cv["held_out"]["mean_mflops"] < MFLOPS[-1]  # still exits early, not merely "never"
    # choose_policy deploys thresholds chosen on the whole split for the same negative target; where no early
    # answer beats the final exit by that much there, that is "never exit early" (drop 0).
    t = optimise_thresholds(s, MFLOPS, 0.005 - cv["margin"])
    r = evaluate(s, [*t, 0.0], MFLOPS)
    assert r["drop"] <= max(0.0, 0.005 - cv["margin"]) + 1e-12
    assert t != [NEVER, NEVER] or r["drop"] == 0.0


def test_a_negative_target_no_early_answer_can_meet_means_never_exit_early():
    s = planted()  # the final exit is always right: no cascade can beat it
    assert optimise_thresholds(s, MFLOPS, -0.001) == [NEVER, NEVER]
    assert best_shared_threshold(s, MFLOPS, -0.001) == [NEVER, NEVER]


def rule(cost: float, kept: bool = True) -> dict:
    return {"mean_mflops": cost, "promise_kept_in_cross_validation": kept}


def test_served_rule_is_per_exit_unless_the_shared_threshold_keeps_the_promise_for_less():
    assert served_rule({"per_exit": rule(70.0), "shared": rule(75.0)}) == "per_exit"
    assert served_rule({"per_exit": rule(75.0), "shared": rule(75.0)}) == "per_exit"  # a tie stays per exit
    assert served_rule({"per_exit": rule(125.5), "shared": rule(82.9)}) == "shared"  # per exit gave up early exit
    assert served_rule({"per_exit": rule(60.0, kept=False), "shared": rule(80.0)}) == "shared"
    assert served_rule({"per_exit": rule(90.0), "shared": rule(80.0, kept=False)}) == "per_exit"


def test_served_score_is_the_cheapest_that_kept_its_promise():
    def score(per_exit: float, shared: float, kept: bool = True) -> dict:
        return {"per_exit": rule(per_exit, kept), "shared": rule(shared, kept)}

    assert served_score({"top1": score(74.7, 75.4), "margin": score(68.7, 70.0)}) == "margin"
    assert served_score({"top1": score(74.7, 75.4), "margin": score(80.0, 72.0)}) == "margin"  # its shared rule
    assert served_score({"top1": score(70.0, 75.0), "margin": score(70.0, 71.0)}) == "top1"  # a tie: top1
    assert served_score({"top1": score(74.7, 75.4), "margin": score(60.0, 61.0, kept=False)}) == "top1"
    assert served_score({"top1": score(74.7, 75.4, kept=False), "margin": score(80.0, 81.0, kept=False)}) == "top1"


def near_ties(n: int = 2000):
    """Two exits, four classes, the final exit always right (mflops 1 and 10). Exit 0: half the images clear
    and right (0.7 / 0.1 / 0.1 / 0.1), a quarter near ties and wrong (0.7 on class 0, 0.28 on the label 1), a
    quarter unsure and right (0.5 / 0.2 / 0.15 / 0.15). The top-1 probability cannot tell the first two groups
    apart (both 0.7), so it must send everything to the final exit (cost 10); the margin can (0.6 against
    0.42): by hand, a threshold in (0.42, 0.6] stops the clear half at exit 0, cost 0.5 * 1 + 0.5 * 10 = 5.5,
    no drop."""
    a, b = n // 2, n // 2 + n // 4
    p0 = np.empty((n, 4))
    p0[:a], p0[a:b], p0[b:] = [0.7, 0.1, 0.1, 0.1], [0.7, 0.28, 0.01, 0.01], [0.5, 0.2, 0.15, 0.15]
    labels = np.zeros(n, dtype=int)
    labels[a:b] = 1
    final = np.full((n, 4), 0.01)
    final[np.arange(n), labels] = 0.97
    return [p0, final], labels


def test_margin_score_by_hand():
    probs, labels = near_ties(8)
    s = ExitScores.from_probs(probs, labels, "margin")
    np.testing.assert_allclose(s.conf[0], [0.6] * 4 + [0.42] * 2 + [0.3] * 2)
    np.testing.assert_allclose(s.conf[1], [0.96] * 8)
    assert s.correct[0].tolist() == [True] * 4 + [False] * 2 + [True] * 2


def test_make_policy_serves_the_margin_where_the_top1_probability_cannot_tell():
    from export.build import make_policy

    probs, labels = near_ties()
    policy = make_policy(probs, labels, [1.0, 10.0], 0.005)
    assert policy["scores"]["top1"]["mean_mflops"] == pytest.approx(10.0)  # never exits early
    assert policy["score"] == "margin" and 0.42 < policy["thresholds"][0] <= 0.6
    assert policy["mean_mflops"] == pytest.approx(5.5) and policy["val_accuracy"] == 1.0
    assert policy["exit_rates"] == [0.5, 0.5] and policy["promise_kept_in_cross_validation"]


def test_a_forced_score_is_served_even_where_the_other_is_cheaper():
    from export.build import make_policy

    probs, labels = near_ties()
    policy = make_policy(probs, labels, [1.0, 10.0], 0.005, scores=("top1",))
    assert policy["score"] == "top1" and list(policy["scores"]) == ["top1"]
    assert policy["mean_mflops"] == pytest.approx(10.0)  # the top-1 probability cannot tell: never exit early


def test_paired_drop_and_its_standard_error_by_hand():
    s = planted()
    # Thresholds 0.9 / 0.6: group D stops at exit 0 (wrong, final right: +1), group C at exit 1 (250 wrong: +1).
    d = paired_drop(s, [0.9, 0.6, 0.0])
    assert d.sum() == 200 + 250 and set(np.unique(d)) == {0.0, 1.0}
    assert d.mean() == pytest.approx(evaluate(s, [0.9, 0.6, 0.0], MFLOPS)["drop"])
    p = 0.45  # 450 ones in 1,000: sample sd sqrt(p(1-p) * n/(n-1)), over sqrt(n)
    assert drop_standard_error(d) == pytest.approx(np.sqrt(p * (1 - p) * 1000 / 999) / np.sqrt(1000))
    assert drop_standard_error(np.array([1.0])) == 0.0


def test_fresh_set_miss_rate_by_hand():
    from math import erf, sqrt

    s = planted()
    # As above: thresholds 0.9 / 0.6 give 450 paired drops of 1 in 1,000 images; their sample sd is
    # sqrt(0.45 * 0.55 * 1000 / 999). On a fresh set of 4,000 images the drop's spread around the expected one is
    # that sd times sqrt(1/1000 + 1/4000) (calibration set's error plus the fresh set's); a miss is a drop past 0.46.
    sd = sqrt(0.45 * 0.55 * 1000 / 999) * sqrt(1 / 1000 + 1 / 4000)
    normal_cdf = lambda z: 0.5 * (1 + erf(z / sqrt(2)))  # noqa: E731
    for expected in (0.44, 0.45, 0.47):
        rate = fresh_set_miss_rate(s, [0.9, 0.6, 0.0], expected, 0.46, fresh_images=4000)
        assert rate == pytest.approx(1 - normal_cdf((0.46 - expected) / sd), abs=1e-9)
    assert fresh_set_miss_rate(s, [0.9, 0.6, 0.0], 0.45, 0.45, fresh_images=4000) == pytest.approx(0.5)
    # Never exiting early: every paired drop is 0, nothing varies, and the expected drop decides
    assert fresh_set_miss_rate(s, [NEVER, NEVER, 0.0], 0.0, 0.005) == 0.0
    assert fresh_set_miss_rate(s, [NEVER, NEVER, 0.0], 0.01, 0.005) == 1.0


def test_held_out_standard_error_averages_each_image_over_its_repeats():
    # Four images; two repeats. Image 0 held out twice (1 and 0: mean 0.5), image 1 twice (1, 1), image 2 once
    # (-1), image 3 never (not counted).
    folds = [{"held": np.array([0, 1]), "per_image_drop": np.array([1.0, 1.0])},
             {"held": np.array([0, 1, 2]), "per_image_drop": np.array([0.0, 1.0, -1.0])}]
    assert held_out_standard_error(folds, 4) == pytest.approx(np.std([0.5, 1.0, -1.0], ddof=1) / np.sqrt(3))


def test_z_score_of_a_promise_level():
    assert z_score(None) == 0.0 and z_score(0.5) == 0.0
    assert z_score(0.9) == pytest.approx(1.28155, abs=1e-5) and z_score(0.95) == pytest.approx(1.64485, abs=1e-5)
    for bad in (0.4, 1.0):
        with pytest.raises(ValueError, match=f"promise confidence {bad} must be in \\[0.5, 1\\)"):
            z_score(bad)


def test_a_promise_with_confidence_needs_a_larger_margin_and_keeps_its_bound():
    s = random_scores(2000, 7)
    mean = cross_validated(s, MFLOPS, 0.005, optimise_thresholds, seed=0)
    sure = cross_validated(s, MFLOPS, 0.005, optimise_thresholds, seed=0, confidence=0.9)
    assert mean["held_out"]["drop_bound"] == mean["held_out"]["drop"]  # on average: no standard errors added
    h = sure["held_out"]
    assert h["drop_bound"] == pytest.approx(h["drop"] + z_score(0.9) * h["drop_se"])
    assert sure["kept"] and h["drop_bound"] <= 0.005 + 1e-12
    assert sure["margin"] > mean["margin"] and h["drop"] < mean["held_out"]["drop"]
    # the standard error is the held-out images' own, recomputed from the folds
    assert h["drop_se"] == pytest.approx(held_out_standard_error(sure["folds"], s.n)) and h["drop_se"] > 0
