"""Scratch study kept as a record (not project code): a score per auxiliary exit, all 16 combinations, RESULTS §21.
Run from the repository root:
    .venv/bin/python bench/results/policy_score_2026-11-30/scratch_mix.py
(needs the cached logits under runs/policy_eval/)."""

import itertools
import sys

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
from export.calibration import fit_temperature, softmax
from export.policy import ExitScores, cross_validated, evaluate, optimise_thresholds
from server.policy import policy_confidence

d = dict(np.load("runs/policy_eval/c_multiway_distill_53ep.npz"))
K = 5
mf = [float(m) for m in d["mflops"]]
temps = [fit_temperature(d[f"val_logits_{i}"], d["val_labels"]) for i in range(K)]
V = [softmax(d[f"val_logits_{i}"] / t) for i, t in enumerate(temps)]
T = [softmax(d[f"test_logits_{i}"] / t) for i, t in enumerate(temps)]
def scores(P, labels, combo):
    pred = np.stack([p.argmax(1) for p in P])
    conf = np.stack([policy_confidence(p, s) for p, s in zip(P, (*combo, "top1"))])
    return ExitScores(conf, pred == labels[None], pred)
res = []
for combo in itertools.product(("top1", "margin"), repeat=4):
    sv = scores(V, d["val_labels"], combo)
    cv = cross_validated(sv, mf, 0.005, optimise_thresholds, 0)
    t = optimise_thresholds(sv, mf, 0.005 - cv["margin"])
    w = evaluate(sv, [*t, 0.0], mf)
    r = evaluate(scores(T, d["test_labels"], combo), [*t, 0.0], mf)
    res.append((w["mean_mflops"], combo, cv["held_out"]["drop"], r["drop"], r["mean_mflops"]))
    print(combo, f"val MF {w['mean_mflops']:.1f} cv drop {100*cv['held_out']['drop']:.2f} "
          f"test drop {100*r['drop']:.2f} test MF {r['mean_mflops']:.1f}", flush=True)
