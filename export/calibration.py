"""Calibration on the validation split (never the test set): a temperature per exit fitted by NLL, the
threshold -> (accuracy, exit rate) table per exit, and the default early-exit policy."""

from __future__ import annotations

import numpy as np

THRESHOLDS = [round(t, 3) for t in np.concatenate([np.arange(0.0, 0.9, 0.05), np.arange(0.9, 1.0, 0.01), [0.995, 0.999]])]
POLICY_MAX_ACCURACY_DROP = 0.005  # the default policy keeps validation accuracy within 0.5 pp of the final exit's


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, lo: float = 0.05, hi: float = 20.0) -> float:
    """Minimise NLL over T (Guo et al. 2017, temperature scaling). NLL is unimodal in log T, so a golden
    section search on log T converges without gradients or torch."""
    a, b = np.log(lo), np.log(hi)
    g = (np.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(logits, labels, np.exp(c)), nll(logits, labels, np.exp(d))
    for _ in range(80):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(logits, labels, np.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(logits, labels, np.exp(d))
    return float(np.exp((a + b) / 2))


def threshold_table(probs: np.ndarray, labels: np.ndarray) -> list[dict]:
    """For each threshold t: the fraction of images whose top-1 probability is >= t (exit rate) and the
    accuracy among them (1.0 where none pass, so an empty set never looks wrong)."""
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    rows = []
    for t in THRESHOLDS:
        take = conf >= t
        acc = float((pred[take] == labels[take]).mean()) if take.any() else 1.0
        rows.append({"threshold": t, "accuracy": round(acc, 5), "exit_rate": round(float(take.mean()), 5)})
    return rows


def cascade(probs: list[np.ndarray], labels: np.ndarray, thresholds: list[float], mflops: list[float]) -> dict:
    """Simulate the server's confidence rule: stop at the first exit whose calibrated top-1 probability is
    >= its threshold, else at the final exit. Returns accuracy, mean MFLOPs and the rate of each exit."""
    n, k = len(labels), len(probs)
    stop = np.full(n, k - 1)
    undecided = np.ones(n, dtype=bool)
    for i in range(k - 1):
        hit = undecided & (probs[i].max(axis=1) >= thresholds[i])
        stop[hit] = i
        undecided &= ~hit
    pred = np.stack([p.argmax(axis=1) for p in probs])[stop, np.arange(n)]
    rates = np.bincount(stop, minlength=k) / n
    return {"accuracy": float((pred == labels).mean()), "mean_mflops": float(np.dot(rates, mflops)),
            "exit_rates": [round(float(r), 5) for r in rates]}


def default_policy(probs: list[np.ndarray], labels: np.ndarray, mflops: list[float]) -> dict:
    """The rule: one threshold t shared by every auxiliary exit, the lowest on the THRESHOLDS grid whose
    cascade keeps validation accuracy >= final-exit accuracy - 0.5 pp. The lowest such t stops requests
    as early as possible; the final exit answers the rest."""
    final_acc = float((probs[-1].argmax(axis=1) == labels).mean())
    target = final_acc - POLICY_MAX_ACCURACY_DROP
    curve = []
    chosen = None
    for t in THRESHOLDS:
        r = cascade(probs, labels, [t] * len(probs), mflops)
        curve.append({"threshold": t, **r})
        if chosen is None and r["accuracy"] >= target:
            chosen = {"threshold": t, **r}
    if chosen is None:  # only reachable if even t=0.999 misses; then answer from the final exit
        chosen = {"threshold": 1.0, **cascade(probs, labels, [1.01] * len(probs), mflops)}
    return {
        "rule": "lowest shared confidence threshold whose validation accuracy is within 0.5 pp of the final exit's",
        "thresholds": [chosen["threshold"]] * (len(probs) - 1) + [0.0],
        "val_accuracy": round(chosen["accuracy"], 5), "final_exit_val_accuracy": round(final_acc, 5),
        "mean_mflops": round(chosen["mean_mflops"], 3), "exit_rates": chosen["exit_rates"],
        "curve": [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()} for row in curve],
    }
