"""Scratch study kept as a record (not project code): learned gate per exit (logistic regression) against the served scores, RESULTS §21.
Run from the repository root:
    .venv/bin/python bench/results/policy_score_2026-11-30/scratch_gate.py
(needs the cached logits under runs/policy_eval/)."""

import sys

import numpy as np
import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
from bench.policy_eval import DEFAULT_CKPT, cache_path, split_logits
from export.calibration import fit_temperature, softmax
from export.policy import ExitScores, cross_validated, evaluate, optimise_thresholds

d = split_logits(DEFAULT_CKPT, "", cache_path(str(DEFAULT_CKPT)))
K = 5
mflops = [float(m) for m in d["mflops"]]
temps = [fit_temperature(d[f"val_logits_{i}"], d["val_labels"]) for i in range(K)]
P = {s: [softmax(d[f"{s}_logits_{i}"] / t) for i, t in enumerate(temps)] for s in ("val", "test")}
L = {s: d[f"{s}_labels"] for s in ("val", "test")}

def feats(ps, k):
    cols = []
    for j in range(k + 1):
        p = ps[j]
        srt = np.sort(p, axis=1)
        ent = -(p * np.log(np.clip(p, 1e-12, None))).sum(1) / np.log(10)
        cols += [srt[:, -1], srt[:, -1] - srt[:, -2], ent]
        if j < k:
            cols.append((ps[j].argmax(1) == ps[k].argmax(1)).astype(float))
            cols.append(ps[j][np.arange(len(p)), ps[k].argmax(1)])  # earlier exit's prob of exit k's answer
    x = np.stack(cols, 1)
    return x

def fit_lr(x, y, l2=1e-3):
    x = torch.tensor(x, dtype=torch.float64)
    y = torch.tensor(y, dtype=torch.float64)
    mu, sd = x.mean(0), x.std(0) + 1e-9
    xs = (x - mu) / sd
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)
    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xs @ w + b, y) + l2 * (w ** 2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return lambda z: torch.sigmoid(((torch.tensor(z) - mu) / sd) @ w.detach() + b.detach()).numpy()

def gate_scores(target):
    nval = len(L["val"])
    rng = np.random.default_rng(0)
    folds = rng.permutation(nval) % 5
    conf_val = np.zeros((K, nval))
    conf_test = np.zeros((K, len(L["test"])))
    pred_val = np.stack([p.argmax(1) for p in P["val"]])
    pred_test = np.stack([p.argmax(1) for p in P["test"]])
    for k in range(K - 1):
        xv, xt = feats(P["val"], k), feats(P["test"], k)
        y = (pred_val[k] == L["val"]) if target == "correct" else (pred_val[k] == pred_val[-1])
        for f in range(5):
            m = fit_lr(xv[folds != f], y[folds != f].astype(float))
            conf_val[k, folds == f] = m(xv[folds == f])
        conf_test[k] = fit_lr(xv, y.astype(float))(xt)
    conf_val[-1] = 1
    conf_test[-1] = 1
    return (ExitScores(conf_val, pred_val == L["val"][None], pred_val), ExitScores(conf_test, pred_test == L["test"][None], pred_test))

for name, pair in [("served", (ExitScores.from_probs(P["val"], L["val"]), ExitScores.from_probs(P["test"], L["test"]))),
                   ("gate-correct", gate_scores("correct")), ("gate-agree", gate_scores("agree"))]:
    sv, st = pair
    for pp in (0.5, 1.0):
        cv = cross_validated(sv, mflops, pp / 100, optimise_thresholds, 0)
        t = optimise_thresholds(sv, mflops, pp / 100 - cv["margin"])
        r = evaluate(st, [*t, 0.0], mflops)
        print(name, pp, t, f"cv {100*cv['held_out']['drop']:.2f} cvmf {cv['held_out']['mean_mflops']:.1f} "
              f"test drop {100*r['drop']:.2f} mflops {r['mean_mflops']:.1f} x {r['mean_mflops']/mflops[-1]:.3f}", flush=True)
