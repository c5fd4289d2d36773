"""Scratch study (RESULTS §64): do bagged thresholds make the early-exit policy's drop on unseen images vary less?

    PYTHONPATH=. python bench/results/policy_bagging_2026-12-02/scratch_bagged_thresholds.py 15

As bench/policy_coverage.py: the default checkpoint's validation and test logits pooled and redrawn 20 times into
5,000 calibration and 10,000 unseen images (a method study; nothing deployed is chosen from it). On each draw,
per target drop, export's optimise_thresholds on the calibration set ("plain") against the per-exit median of
the thresholds it picks on B bootstrap resamples of that set ("bag"), and, as a reference, the deployed model's
thresholds held fixed ("fixed": how much of the spread is the unseen images' own noise). No cross-validated margin:
the raw chooser at each target, to see the spread itself.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from bench.policy_coverage import pooled
from bench.policy_eval import DEFAULT_CKPT, cache_path, split_logits
from export.calibration import fit_temperature, softmax
from export.policy import ExitScores, evaluate, optimise_thresholds

DEPLOYED = [0.85, 0.6, 0.55, 0.2]  # models/repository/auxnet56_5-cifar10's thresholds (RESULTS §60)
TARGETS = [0.0, 0.002, 0.004, 0.006]
DRAWS = 20


def main() -> None:
    bags = int(sys.argv[1])
    d = split_logits(Path(DEFAULT_CKPT), "../shared/data/cifar10-jpeg", cache_path(DEFAULT_CKPT))
    logits, labels, n_val = pooled(d)
    mflops = [float(m) for m in d["mflops"]]
    rng = np.random.default_rng(0)
    results: dict[tuple[str, float], list[tuple[float, float]]] = {}
    start = time.time()
    for _ in range(DRAWS):
        perm = rng.permutation(len(labels))
        calib, unseen = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        probs = [softmax(z / fit_temperature(z[calib], labels[calib])) for z in logits]
        scores = ExitScores.from_probs(probs, labels)
        on_calib, on_unseen = scores.subset(calib), scores.subset(unseen)
        r = evaluate(on_unseen, [*DEPLOYED, 0.0], mflops)
        results.setdefault(("fixed", -1.0), []).append((r["drop"], r["mean_mflops"] / mflops[-1]))
        for target in TARGETS:
            plain = optimise_thresholds(on_calib, mflops, target)
            picked = [optimise_thresholds(on_calib.subset(np.sort(rng.integers(0, on_calib.n, on_calib.n))), mflops, target)
                      for _ in range(bags)]
            bagged = list(np.median(np.array(picked), axis=0))
            for name, thresholds in (("plain", plain), ("bag", bagged)):
                r = evaluate(on_unseen, [*thresholds, 0.0], mflops)
                results.setdefault((name, target), []).append((r["drop"], r["mean_mflops"] / mflops[-1]))
    print(f"{DRAWS} draws, {bags} bootstrap resamples, {time.time() - start:.0f} s")
    for (name, target), rows in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        a = np.array(rows)
        label = "deployed thresholds" if target < 0 else f"target {100 * target:.1f} pp"
        print(f"{name:5} {label}: unseen drop {100 * a[:, 0].mean():.2f} pp, sd {100 * a[:, 0].std(ddof=1):.2f}, "
              f"> 0.5 pp on {np.mean(a[:, 0] > 0.005):.0%}, cost {a[:, 1].mean():.3f}x final")


if __name__ == "__main__":
    main()
