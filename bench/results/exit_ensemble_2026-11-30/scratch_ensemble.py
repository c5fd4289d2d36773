"""Scratch study: exit k answers from a weighted geometric ensemble of exits 0..k (Wołczyk et al. 2021, "Zero Time
Waste"), not from exit k alone. Does the served policy get cheaper at the same promise?
    .venv/bin/python bench/results/exit_ensemble_2026-11-30/scratch_ensemble.py"""

import sys

import numpy as np
import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
from bench.policy_eval import DEFAULT_CKPT, cache_path, split_logits
from export.calibration import fit_temperature, softmax
from export.policy import ExitScores, best_shared_threshold, cross_validated, evaluate, optimise_thresholds

ck = sys.argv[1] if len(sys.argv) > 1 else str(DEFAULT_CKPT)
d = split_logits(ck, "", cache_path(ck))
K = 5
mflops = [float(m) for m in d["mflops"]]
temps = [fit_temperature(d[f"val_logits_{i}"], d["val_labels"]) for i in range(K)]
LP = {s: [torch.log_softmax(torch.tensor(d[f"{s}_logits_{i}"] / t), 1).numpy() for i, t in enumerate(temps)] for s in ("val", "test")}
L = {s: d[f"{s}_labels"] for s in ("val", "test")}


def fit_weights(lps, y):
    x = torch.tensor(np.stack(lps))  # (k+1, N, C)
    y = torch.tensor(y)
    w = torch.zeros(len(lps), dtype=torch.float64)
    w[-1] = 1.0
    w.requires_grad_(True)
    opt = torch.optim.LBFGS([w], max_iter=300, line_search_fn="strong_wolfe")
    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy((w[:, None, None] * x).sum(0), y)
        loss.backward()
        return loss
    opt.step(closure)
    return w.detach().numpy()


def ensemble_probs(split, weights):
    out = []
    for k in range(K):
        if k == K - 1 or weights[k] is None:
            out.append(np.exp(LP[split][k]))
            continue
        z = sum(weights[k][j] * LP[split][j] for j in range(k + 1))
        out.append(softmax(z))
    return out


def report(name, pv, pt):
    for score in ("top1", "margin"):
        sv, st = ExitScores.from_probs(pv, L["val"], score), ExitScores.from_probs(pt, L["test"], score)
        print(name, score, "val top1/exit", [round(100 * float(c.mean()), 1) for c in sv.correct],
              "test", [round(100 * float(c.mean()), 1) for c in st.correct])
        for rule, chooser in (("per_exit", optimise_thresholds), ("shared", best_shared_threshold)):
            cv = cross_validated(sv, mflops, 0.005, chooser, 0)
            t = chooser(sv, mflops, 0.005 - cv["margin"])
            v = evaluate(sv, [*t, 0.0], mflops)
            r = evaluate(st, [*t, 0.0], mflops)
            print(f"  {rule:8s} t={t} margin {100*cv['margin']:.1f} cv drop {100*cv['held_out']['drop']:.2f} kept {cv['kept']} "
                  f"val mflops {v['mean_mflops']:.1f} | test drop {100*r['drop']:.2f} mflops {r['mean_mflops']:.1f} "
                  f"x {r['mean_mflops']/mflops[-1]:.3f}", flush=True)


report("single", ensemble_probs("val", [None] * K), ensemble_probs("test", [None] * K))
W = [fit_weights(LP["val"][: k + 1], L["val"]) if k < K - 1 else None for k in range(K)]
print("weights", [None if w is None else np.round(w, 3).tolist() for w in W])
report("ensemble", ensemble_probs("val", W), ensemble_probs("test", W))
# Two-exit ensemble only (k and k-1): fewer weights.
W2 = [None if k in (0, K - 1) else None for k in range(K)]
for k in range(1, K - 1):
    w = fit_weights(LP["val"][k - 1: k + 1], L["val"])
    W2[k] = np.concatenate([np.zeros(k - 1), w])
W2[0] = np.array([1.0])
report("pair", ensemble_probs("val", W2), ensemble_probs("test", W2))
