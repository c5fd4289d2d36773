"""Scratch (2026-12-01, §22): the served policy with retrained linear heads on the cached features, on validation
and (printed too) test. Ran from the repository root as /tmp/heads/policy.py beside scratch_train_heads.py (then
/tmp/heads/train_heads.py) after scratch_extract.py; reformatted by ruff since, unchanged otherwise."""

import sys

import numpy as np
import torch

sys.path.insert(0, "/tmp/heads")
from train_heads import C, fit, te, va, variant

from export.calibration import fit_temperature, softmax
from export.policy import ExitScores, choose_policy, evaluate, served_rule, served_score
from server.policy import POLICY_SCORES

base = np.load("runs/policy_eval/c_multiway_distill_53ep.npz")
mflops = [float(m) for m in base["mflops"]]


def report(tag, val, test):
    temps = [fit_temperature(z, va["y"]) for z in val]
    vp = [softmax(z / t) for z, t in zip(val, temps)]
    tp = [softmax(z / t) for z, t in zip(test, temps)]
    for pp in (0.5, 1.0):
        by = {s: choose_policy(vp, va["y"], mflops, pp / 100, score=s) for s in POLICY_SCORES}
        s = served_score(by)
        rule = served_rule(by[s])
        th = by[s][rule]["thresholds"]
        r = evaluate(ExitScores.from_probs(tp, te["y"], s), th, mflops)
        v = evaluate(ExitScores.from_probs(vp, va["y"], s), th, mflops)
        print(
            f"{tag} promise {pp}: {s}/{rule} {th[:-1]} val {v['mean_mflops']:.1f} | "
            f"test acc {100 * r['accuracy']:.2f} drop {100 * r['drop']:.2f} "
            f"MFLOPs {r['mean_mflops']:.1f} = {r['mean_mflops'] / mflops[-1]:.3f}x rates {[round(100 * x) for x in r['exit_rates']]}",
            flush=True,
        )


val = [va[f"z{k}"].astype(np.float64) for k in range(5)]
test = [te[f"z{k}"].astype(np.float64) for k in range(5)]
report("current heads", val, test)
choice = {0: ("g4", 1), 1: ("g4", 1), 2: ("g4", 1), 3: ("g2", 0)}
new_val, new_test = list(val), list(test)
for k, (v, kd) in choice.items():
    torch.manual_seed(k)
    lin = fit(k, v, kd)
    with torch.no_grad():
        new_val[k] = lin(variant(va[f"f{k}"], C[k], v)).double().numpy()
        new_test[k] = lin(variant(te[f"f{k}"], C[k], v)).double().numpy()
    print("exit", k, "test acc", (new_test[k].argmax(1) == te["y"]).mean())
    if k == 1:
        report("new heads 0,1", new_val, new_test)
report("new heads 0-3", new_val, new_test)
np.savez(
    "/tmp/heads/new_logits.npz",
    **{f"val_logits_{k}": z for k, z in enumerate(new_val)},
    **{f"test_logits_{k}": z for k, z in enumerate(new_test)},
    val_labels=va["y"],
    test_labels=te["y"],
    mflops=np.array(mflops),
)
