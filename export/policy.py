"""The early-exit policy: one confidence threshold per auxiliary exit, chosen for the lowest mean cost
under a user-given accuracy drop, with a promise that holds on images the choice never saw (issue 13).

Why not one shared threshold chosen on all of the validation split: measured on the committed model, a
threshold chosen and reported on the same 5,000 images lost 0.66 pp on unseen images where 0.5 was promised,
and one threshold for every exit leaves cost on the table (a shallow exit is less reliable at the same
confidence than a deep one). Here:

1. `optimise_thresholds` searches per-exit thresholds on a grid by coordinate descent from two feasible
   starts (the best shared threshold, and "never exit early"), keeping a move only if it lowers mean MFLOPs
   and the cascade's accuracy stays >= final-exit accuracy - drop. Never worse than the shared threshold.
2. `choose_policy` makes the promise hold out of sample: repeated two-fold cross-validation on the validation
   split finds the smallest safety margin m such that thresholds chosen on one half for a drop of
   (max_drop - m) lose at most max_drop on the other half, on average over the folds. The deployed
   thresholds are then chosen on the whole split at max_drop - m; the manifest reports the held-out
   (cross-validated) accuracy and cost, and whether the promise was kept.
   With a confidence level c (`export --promise-confidence`), "on average" becomes "with confidence c": the
   margin grows until the held-out drop plus z_c standard errors is within max_drop (see drop_standard_error).
   Without it the promise is a point estimate: redrawn 40 times, the default model's policy lost more than
   0.5 pp on 28% of fresh 10,000-image sets; with confidence 0.9, on 2% (bench/RESULTS.md §23).
   The margin may exceed max_drop: the thresholds must then make the cascade *beat* the final exit on the
   half they are chosen on. That is needed where the deep auxiliary exits are as accurate as the final one
   (self-distilled models): choosing the cheapest thresholds that merely tie the final exit on one half
   overfits that half's noise. Measured on a self-distilled AuxNet-56-5 (RESULTS §19): a target of 0 still
   lost 0.55 pp held out, a target of -0.1 pp lost 0.37. Far enough below zero no early answer qualifies and
   the policy becomes "never exit early", whose drop is 0: the search always ends with a kept promise.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from export.calibration import THRESHOLDS
from server.policy import POLICY_SCORES, policy_confidence

NEVER = 1.01  # a threshold no calibrated probability reaches: the exit never answers on confidence
GRID = [float(t) for t in (*THRESHOLDS, NEVER)]
MARGIN_STEP = 0.001  # safety margins tried by cross-validation, in steps of 0.1 pp
MARGIN_BEYOND_MAX = 0.02  # how far past max_drop the margin may go (2 pp; in practice "never exit early" comes first)
CV_REPEATS = 5  # random 2-fold splits of the validation split
FRESH_SET_IMAGES = 10_000  # the fresh set a promise's miss rate is stated for (the size of CIFAR's test split)
# Confidence bins of the agreement table the server's monitor tests against (finer where most answers are).
AGREEMENT_BIN_EDGES = [0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 1.0]


@dataclass(frozen=True)
class ExitScores:
    """What the policy needs of each exit, for N images: its confidence score (server/policy.py's
    POLICY_SCORES), whether top-1 is right, and the top-1 label (K arrays of shape (N,))."""

    conf: np.ndarray  # (K, N)
    correct: np.ndarray  # (K, N) bool
    pred: np.ndarray  # (K, N) int

    @classmethod
    def from_probs(cls, probs: list[np.ndarray], labels: np.ndarray, score: str = "top1") -> ExitScores:
        pred = np.stack([p.argmax(axis=1) for p in probs])
        return cls(np.stack([policy_confidence(p, score) for p in probs]), pred == labels[None], pred)

    def subset(self, idx: np.ndarray) -> ExitScores:
        return ExitScores(self.conf[:, idx], self.correct[:, idx], self.pred[:, idx])

    @property
    def n(self) -> int:
        return self.conf.shape[1]


def stop_exits(s: ExitScores, thresholds: list[float]) -> np.ndarray:
    """(N,) the exit each image stops at: the first auxiliary exit with confidence >= its threshold, else the
    final exit (the server's confidence rule)."""
    k = s.conf.shape[0]
    hits = s.conf[:-1] >= np.asarray(thresholds[: k - 1], dtype=np.float64)[:, None]  # (K-1, N)
    hits = np.vstack([hits, np.ones((1, s.n), dtype=bool)])
    return hits.argmax(axis=0)


def paired_drop(s: ExitScores, thresholds: list[float]) -> np.ndarray:
    """(N,) per image: final exit right minus cascade right (1, 0 or -1); its mean is the cascade's drop."""
    stop = stop_exits(s, thresholds)
    return s.correct[-1].astype(np.float64) - s.correct[stop, np.arange(s.n)]


def drop_standard_error(per_image: np.ndarray) -> float:
    """The standard error of a drop measured on these images: the paired differences' standard deviation over
    sqrt(N). The two accuracies share the images, so their difference is far less noisy than either: on the
    default model the cascade and the final exit disagree on ~2% of images, and the drop's standard error on
    10,000 is ~0.15 pp where each accuracy's is ~0.33."""
    n = len(per_image)
    return float(per_image.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0


def z_score(confidence: float | None) -> float:
    """The one-sided normal quantile of a promise's confidence level; None (a promise on average) is 0."""
    if confidence is None:
        return 0.0
    if not 0.5 <= confidence < 1:
        raise ValueError(f"promise confidence {confidence} must be in [0.5, 1)")
    return NormalDist().inv_cdf(confidence)


def fresh_set_miss_rate(s: ExitScores, thresholds: list[float], expected_drop: float, max_drop: float,
                        fresh_images: int = FRESH_SET_IMAGES) -> float:
    """How often the drop on a fresh set of `fresh_images` images would exceed max_drop (normal approximation).
    Thresholds fitted on these N images carry their sampling error, sigma / sqrt(N), and the fresh set adds its own,
    sigma / sqrt(fresh_images), sigma the per-image paired drop's standard deviation: 0.42 pp predicted that way
    for the default model against 0.41-0.46 measured over redrawn sets (RESULTS §64). `expected_drop`: the
    cross-validated (held-out) drop. Thresholds include the final exit's."""
    sigma = float(paired_drop(s, thresholds).std(ddof=1)) if s.n > 1 else 0.0
    spread = sigma * np.sqrt(1 / s.n + 1 / fresh_images)
    if spread == 0:
        return float(expected_drop > max_drop + 1e-12)
    return 1 - NormalDist().cdf((max_drop - expected_drop) / spread)


def evaluate(s: ExitScores, thresholds: list[float], mflops: list[float]) -> dict:
    """Accuracy, mean MFLOPs, exit rates of the cascade, and its drop against the final exit alone."""
    stop = stop_exits(s, thresholds)
    cols = np.arange(s.n)
    acc = float(s.correct[stop, cols].mean())
    rates = np.bincount(stop, minlength=s.conf.shape[0]) / s.n
    final = float(s.correct[-1].mean())
    return {"accuracy": acc, "final_accuracy": final, "drop": final - acc,
            "mean_mflops": float(np.dot(rates, mflops)), "exit_rates": [float(r) for r in rates]}


def best_shared_threshold(s: ExitScores, mflops: list[float], max_drop: float) -> list[float]:
    """The old rule: the lowest shared threshold on the grid that keeps the drop within max_drop."""
    k = s.conf.shape[0]
    for t in GRID:
        if evaluate(s, [t] * (k - 1), mflops)["drop"] <= max_drop + 1e-12:
            return [t] * (k - 1)
    return [NEVER] * (k - 1)


def optimise_thresholds(s: ExitScores, mflops: list[float], max_drop: float, max_passes: int = 20) -> list[float]:
    """Per-exit thresholds (auxiliary exits only) of least mean MFLOPs whose drop stays <= max_drop.

    Local search on the grid from two feasible starts: moves of one threshold, and when none helps, joint
    moves of two (single moves alone stall where lowering one exit's threshold only pays once another is
    raised). With two auxiliary exits this is an exhaustive search; a test checks it against brute force
    with three."""
    k = s.conf.shape[0]
    best, best_cost = None, np.inf
    for start in (best_shared_threshold(s, mflops, max_drop), [NEVER] * (k - 1)):
        t = list(start)
        cost = evaluate(s, t, mflops)["mean_mflops"]
        for _ in range(max_passes):
            t, cost, moved = _improve(s, mflops, max_drop, t, cost, 1)
            if not moved:
                t, cost, moved = _improve(s, mflops, max_drop, t, cost, 2)
            if not moved:
                break
        if cost < best_cost - 1e-9:
            best, best_cost = t, cost
    return best


def _sweep(s: ExitScores, t: list[float], i: int, mflops: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and mean MFLOPs of the cascade for every grid value of exit i's threshold, the others fixed, in
    one vectorised pass: an image reaching exit i stops there if its confidence passes, else where it would
    stop with exit i never answering."""
    cols = np.arange(s.n)
    without = stop_exits(s, [*t[:i], NEVER, *t[i + 1:]])
    base_correct, base_cost = s.correct[without, cols], np.asarray(mflops)[without]
    reach = without > i  # without == i cannot happen: exit i never answers there
    gain = s.correct[i, reach].astype(np.float64) - base_correct[reach]
    saving = mflops[i] - base_cost[reach]
    take = s.conf[i, reach][None, :] >= np.asarray(GRID)[:, None]  # (G, reaching)
    return (base_correct.sum() + take @ gain) / s.n, (base_cost.sum() + take @ saving) / s.n


def _improve(s, mflops, max_drop, t, cost, arity: int):
    """The best feasible move of `arity` thresholds at once (1 or 2); ties in cost go to higher thresholds
    (same cost, fewer answers at risk)."""
    final = float(s.correct[-1].mean())
    best_t, best_cost = t, cost
    for idx in itertools.combinations(range(len(t)), arity):
        *fixed, swept = idx
        for values in itertools.product(GRID, repeat=len(fixed)):
            base = list(t)
            for i, v in zip(fixed, values):
                base[i] = v
            acc, costs = _sweep(s, base, swept, mflops)
            for g, a, c in zip(GRID, acc, costs):
                trial = [*base[:swept], g, *base[swept + 1:]]
                if trial == t or final - a > max_drop + 1e-12:
                    continue
                if c < best_cost - 1e-9 or (abs(c - best_cost) <= 1e-9 and trial > best_t):
                    best_t, best_cost = trial, float(c)
    return best_t, best_cost, best_t != t


def halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2:])


def held_out_folds(s: ExitScores, mflops: list[float], target_drop: float, chooser,
                   splits: list[tuple[np.ndarray, np.ndarray]]) -> list[dict]:
    """For each 2-fold split, both ways: thresholds chosen on one half for `target_drop`, judged on the other."""
    folds = []
    for a, b in splits:
        for sel, held in ((a, b), (b, a)):
            t = chooser(s.subset(sel), mflops, target_drop)
            judged = s.subset(held)
            folds.append({"thresholds": t, **evaluate(judged, [*t, 0.0], mflops), "held": held,
                          "per_image_drop": paired_drop(judged, [*t, 0.0])})
    return folds


def held_out_standard_error(folds: list[dict], n: int) -> float:
    """The standard error of the cross-validated drop: each image's paired difference averaged over the
    repeats in which it was held out, then drop_standard_error over the images. It counts the noise of which
    images were drawn, not the extra variance of cross-validation itself (there is no unbiased estimator of
    that: Bengio & Grandvalet, JMLR 2004), so it is somewhat optimistic; bench/policy_coverage.py measures how
    often a promise made with it holds on unseen images."""
    total, count = np.zeros(n), np.zeros(n)
    for f in folds:
        total[f["held"]] += f["per_image_drop"]
        count[f["held"]] += 1
    seen = count > 0
    return drop_standard_error(total[seen] / count[seen])


def cross_validated(s: ExitScores, mflops: list[float], max_drop: float, chooser, seed: int,
                    repeats: int = CV_REPEATS, confidence: float | None = None) -> dict:
    """The smallest safety margin m whose thresholds, chosen on one half of the split for a drop of
    max_drop - m, lose at most max_drop on the other half, averaged over `repeats` random 2-fold splits (one
    half of 2,500 images alone is too noisy to judge a 0.5 pp promise: its drop has a standard error near
    0.3 pp). With a `confidence` level, the held-out drop plus that many one-sided standard errors
    (held_out_standard_error) must be within max_drop instead. The target max_drop - m goes below zero when
    it must (module docstring). Returns the margin, every fold and the mean held-out figures at that margin,
    with the drop's standard error and the bound the promise was judged by."""
    z = z_score(confidence)
    splits = [halves(s.n, seed + r) for r in range(repeats)]
    margin = 0.0
    while True:
        folds = held_out_folds(s, mflops, max_drop - margin, chooser, splits)
        held_out = {key: float(np.mean([f[key] for f in folds])) for key in ("accuracy", "final_accuracy", "drop", "mean_mflops")}
        held_out["drop_se"] = held_out_standard_error(folds, s.n)
        held_out["drop_bound"] = held_out["drop"] + z * held_out["drop_se"]
        if held_out["drop_bound"] <= max_drop + 1e-12 or margin >= max_drop + MARGIN_BEYOND_MAX - 1e-12:
            break
        margin = round(margin + MARGIN_STEP, 6)
    return {"margin": margin, "folds": folds, "held_out": held_out, "kept": held_out["drop_bound"] <= max_drop + 1e-12}


def choose_policy(probs: list[np.ndarray], labels: np.ndarray, mflops: list[float], max_drop: float = 0.005,
                  seed: int = 0, score: str = "top1", confidence: float | None = None) -> dict:
    """The manifest's `policy` for one confidence score: per-exit thresholds with cross-validated figures, and
    the shared-threshold rule beside it. Figures are fractions (accuracy 0.86), drops too (0.005 = 0.5 pp).
    `confidence`: the promise's level (cross_validated); None promises the drop on average."""
    s = ExitScores.from_probs(probs, labels, score)
    out = {}
    for name, chooser in (("per_exit", optimise_thresholds), ("shared", best_shared_threshold)):
        cv = cross_validated(s, mflops, max_drop, chooser, seed, confidence=confidence)
        t = chooser(s, mflops, max_drop - cv["margin"])
        whole = evaluate(s, [*t, 0.0], mflops)
        miss = fresh_set_miss_rate(s, [*t, 0.0], cv["held_out"]["drop"], max_drop)
        out[name] = {"thresholds": [*t, 0.0], "margin": cv["margin"], "promise_kept_in_cross_validation": cv["kept"],
                     "fresh_set_miss_rate": {"images": FRESH_SET_IMAGES, "rate": round(miss, 4)},
                     "val_accuracy": round(whole["accuracy"], 5), "mean_mflops": round(whole["mean_mflops"], 3),
                     "exit_rates": [round(r, 5) for r in whole["exit_rates"]],
                     "held_out": {k: round(v, 5) for k, v in cv["held_out"].items()},
                     "folds": [{"thresholds": f["thresholds"], "drop": round(f["drop"], 5),
                                "mean_mflops": round(f["mean_mflops"], 3)} for f in cv["folds"]]}
    return out


def served_rule(chosen: dict) -> str:
    """Which of choose_policy's two rules the server gets: the per-exit thresholds, unless the shared threshold
    kept its promise in cross-validation and costs less on the validation split (or per-exit did not keep it).
    Per-exit thresholds have more freedom to fit one half's noise, so their margin can grow until they give up
    early exit where one shared threshold still pays: a self-distilled AuxNet-56-5 at a 0.25 pp promise got
    "never exit early" (125.5 MFLOPs) per exit against a shared 0.95 at 82.9 (RESULTS §19)."""
    per_exit, shared = chosen["per_exit"], chosen["shared"]
    if shared["promise_kept_in_cross_validation"] and (
            not per_exit["promise_kept_in_cross_validation"] or shared["mean_mflops"] < per_exit["mean_mflops"] - 1e-9):
        return "shared"
    return "per_exit"


def served_score(by_score: dict[str, dict]) -> str:
    """Which confidence score the server compares thresholds with: of each score's served rule (served_rule),
    the one of least mean MFLOPs on the validation split among those that kept the promise in cross-validation;
    ties, or no score kept it, go to the first of POLICY_SCORES ("top1", what the response reports).
    `by_score` maps a score to choose_policy's result for it."""
    def figures(score):
        return by_score[score][served_rule(by_score[score])]

    order = [s for s in POLICY_SCORES if s in by_score]
    kept = [s for s in order if figures(s)["promise_kept_in_cross_validation"]]
    if not kept:
        return order[0]
    return min(kept, key=lambda s: (round(figures(s)["mean_mflops"], 9), order.index(s)))


def conditional_table(s: ExitScores, thresholds: list[float], k: int) -> dict:
    """Among the images that reach exit k under `thresholds` (none of the earlier exits answered them): how
    many reach it, and for each grid threshold the rate of those it would answer and their accuracy. Unlike
    the unconditional table, this is what a change of exit k's threshold really does to the cascade."""
    stop = stop_exits(s, thresholds)
    reach = stop >= k
    conf, correct = s.conf[k, reach], s.correct[k, reach]
    rows = []
    for t in THRESHOLDS:
        take = conf >= t
        rows.append({"threshold": t, "exit_rate": round(float(take.mean()), 5) if reach.any() else 0.0,
                     "accuracy": round(float(correct[take].mean()), 5) if take.any() else None})
    return {"reach_rate": round(float(reach.mean()), 5), "rows": rows}


def agreement_table(s: ExitScores, k: int, thresholds: list[float]) -> dict:
    """How often exit k's top-1 equals the final exit's, by exit k's calibrated confidence: the expectation
    the server's agreement monitor tests live traffic against. Laplace-smoothed ((a+1)/(n+2)) so a sparse
    bin never claims certainty. Also the agreement of the answers the policy gives at exit k."""
    agree = s.pred[k] == s.pred[-1]
    edges = np.asarray(AGREEMENT_BIN_EDGES)
    b = np.clip(np.searchsorted(edges, s.conf[k], side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(b, minlength=len(edges) - 1)
    hits = np.bincount(b, weights=agree, minlength=len(edges) - 1)
    answered = stop_exits(s, thresholds) == k
    return {"bin_edges": AGREEMENT_BIN_EDGES, "count": counts.tolist(),
            "agreement": [round(float((h + 1) / (c + 2)), 5) for h, c in zip(hits, counts)],
            "policy_agreement": round(float(agree[answered].mean()), 5) if answered.any() else None}


def drop_curve(s: ExitScores, mflops: list[float], drops_pp=(0, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8)) -> list[dict]:
    """Per-exit thresholds optimised for each allowed drop (in sample): the trade-off plot's second curve."""
    rows = []
    for d in drops_pp:
        t = optimise_thresholds(s, mflops, d / 100)
        r = evaluate(s, [*t, 0.0], mflops)
        rows.append({"max_drop_pp": d, "thresholds": t, "accuracy": round(r["accuracy"], 5),
                     "mean_mflops": round(r["mean_mflops"], 3)})
    return rows
