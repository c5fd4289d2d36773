"""Scratch study kept as a record (not project code): which score and rule export serves for a model from its cached logits
(the 30-epoch model), RESULTS §21.
Run from the repository root:
    .venv/bin/python bench/results/policy_score_2026-11-30/scratch_served30.py
(needs the cached logits under runs/policy_eval/)."""

import sys

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
from export.calibration import fit_temperature, softmax
from export.policy import choose_policy, served_rule, served_score
from server.policy import POLICY_SCORES

d = dict(np.load(sys.argv[1]))
K = 5
mf = [float(m) for m in d["mflops"]]
temps = [fit_temperature(d[f"val_logits_{i}"], d["val_labels"]) for i in range(K)]
P = [softmax(d[f"val_logits_{i}"] / t) for i, t in enumerate(temps)]
by = {s: choose_policy(P, d["val_labels"], mf, 0.005, score=s) for s in POLICY_SCORES}
for s, c in by.items():
    for r in ("per_exit", "shared"):
        print(s, r, c[r]["thresholds"], c[r]["mean_mflops"], c[r]["held_out"]["drop"], c[r]["promise_kept_in_cross_validation"])
    print("  served rule", served_rule(c))
print("served score", served_score(by))
