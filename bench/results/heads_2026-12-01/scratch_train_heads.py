"""Scratch (2026-12-01, §22), run from the repository root as /tmp/heads/train_heads.py: linear heads on the cache,
validation top-1 per variant. Reformatted by ruff since, unchanged otherwise. Linear heads on pooled frozen
features: which pooling, CE vs CE+KD; val accuracy per exit."""

import glob
import sys

import numpy as np
import torch
import torch.nn.functional as F

torch.manual_seed(0)
torch.set_num_threads(2)
files = sorted(glob.glob("/tmp/heads/train*.npz"))
tr = [np.load(f) for f in files]
va, te = np.load("/tmp/heads/val.npz"), np.load("/tmp/heads/test.npz")


def variant(f, C, v):
    f = torch.from_numpy(f).float()
    g4 = f[:, : C * 16].view(-1, C, 4, 4)
    mx = f[:, C * 16 :]
    if v == "g1":
        return g4.mean((2, 3))
    if v == "g2":
        return F.avg_pool2d(g4, 2).flatten(1)
    if v == "g4":
        return g4.flatten(1)
    if v == "g1max":
        return torch.cat([g4.mean((2, 3)), mx], 1)
    if v == "g2max":
        return torch.cat([F.avg_pool2d(g4, 2).flatten(1), mx], 1)


C = [16, 32, 32, 64]


def fit(k, v, kd, epochs=4, lr=0.05, wd=5e-4):
    X = torch.cat([variant(t[f"f{k}"], C[k], v) for t in tr])
    Y = torch.from_numpy(np.concatenate([t["y"] for t in tr])).long()
    T = torch.from_numpy(np.concatenate([t["z4"] for t in tr])).float()
    lin = torch.nn.Linear(X.shape[1], 10)
    opt = torch.optim.SGD(lin.parameters(), lr=lr, momentum=0.9, weight_decay=wd, nesterov=True)
    steps = epochs * (len(X) // 512)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    for _e in range(epochs):
        perm = torch.randperm(len(X))
        for s in range(len(X) // 512):
            i = perm[s * 512 : (s + 1) * 512]
            z = lin(X[i])
            loss = F.cross_entropy(z, Y[i])
            if kd:
                t = 3.0
                loss = 0.5 * loss + 0.5 * t * t * F.kl_div(F.log_softmax(z / t, 1), F.softmax(T[i] / t, 1), reduction="batchmean")
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return lin


if __name__ == "__main__":
    yv = torch.from_numpy(va["y"]).long()
    for k in range(4):
        base = (torch.from_numpy(va[f"z{k}"]).argmax(1) == yv).float().mean().item()
        print(f"exit {k}: current head val {100 * base:.2f}%", flush=True)
        for v in sys.argv[1].split(","):
            for kd in (0, 1):
                lin = fit(k, v, kd)
                with torch.no_grad():
                    acc = (lin(variant(va[f"f{k}"], C[k], v)).argmax(1) == yv).float().mean().item()
                print(f"  {v:6s} kd={kd} dim={lin.in_features:5d} val {100 * acc:.2f}%", flush=True)
