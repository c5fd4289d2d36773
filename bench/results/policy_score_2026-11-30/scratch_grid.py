"""Scratch study kept as a record (not project code): a finer threshold grid (0.02 steps) against the shipped one, RESULTS §21.
Run from the repository root:
    .venv/bin/python bench/results/policy_score_2026-11-30/scratch_grid.py
(needs the cached logits under runs/policy_eval/)."""

import sys
import time

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
import export.policy as P
from export.calibration import fit_temperature, softmax

d = dict(np.load("runs/policy_eval/c_multiway_distill_53ep.npz"))
K = 5
mf = [float(m) for m in d["mflops"]]
temps = [fit_temperature(d[f"val_logits_{i}"], d["val_labels"]) for i in range(K)]
V = [softmax(d[f"val_logits_{i}"] / t) for i, t in enumerate(temps)]
T = [softmax(d[f"test_logits_{i}"] / t) for i, t in enumerate(temps)]
FINE = [round(x, 3) for x in np.arange(0, 1.0, 0.02)] + [0.99, 0.995, 0.999, P.NEVER]
for name, grid in [("default", list(P.GRID)), ("0.02 everywhere", FINE)]:
    P.GRID = sorted(set(grid))
    t0 = time.time()
    for score in ("top1", "margin"):
        c = P.choose_policy(V, d["val_labels"], mf, 0.005, score=score)
        r = c["per_exit"]
        te = P.evaluate(P.ExitScores.from_probs(T, d["test_labels"], score), r["thresholds"], mf)
        print(name, score, len(P.GRID), r["thresholds"], r["mean_mflops"], r["held_out"]["drop"], "test",
              round(100*te["drop"], 2), round(te["mean_mflops"], 1), f"{time.time()-t0:.0f}s", flush=True)
