"""How the held-out drop of the per-exit policy depends on the drop targeted on the half it is chosen on,
validation split only (RESULTS §19): why the cross-validated margin may exceed the promised drop.

    python -m bench.policy_margin [--checkpoint models/checkpoints/...pt] [--data-dir ../shared/data/cifar10-jpeg]

Uses bench.policy_eval's logit cache (runs/policy_eval/); the test set is not looked at.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.policy_eval import DEFAULT_CKPT, ROOT, cache_path, split_logits
from export.calibration import fit_temperature, softmax
from export.policy import CV_REPEATS, ExitScores, halves, held_out_folds, optimise_thresholds

TARGETS_PP = (0.5, 0.3, 0.1, 0.0, -0.1, -0.2, -0.3, -0.5)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default=str(DEFAULT_CKPT))
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg"))
    args = p.parse_args()
    d = split_logits(Path(args.checkpoint), args.data_dir, cache_path(args.checkpoint))
    k = sum(1 for key in d if key.startswith("val_logits_"))
    mflops = [float(m) for m in d["mflops"]]
    val = [d[f"val_logits_{i}"] for i in range(k)]
    probs = [softmax(z / fit_temperature(z, d["val_labels"])) for z in val]
    s = ExitScores.from_probs(probs, d["val_labels"])
    splits = [halves(s.n, r) for r in range(CV_REPEATS)]  # the splits cross_validated uses (seed 0)
    print(f"{Path(args.checkpoint).name}: validation top-1 per exit {np.round(100 * s.correct.mean(axis=1), 2).tolist()}")
    print("| target drop on the chosen half (pp) | held-out drop (pp) | sd over the 10 folds | held-out mean MFLOPs |")
    print("|---:|---:|---:|---:|")
    for pp in TARGETS_PP:
        folds = held_out_folds(s, mflops, pp / 100, optimise_thresholds, splits)
        drops = [100 * f["drop"] for f in folds]
        print(f"| {pp:+.1f} | {np.mean(drops):.2f} | {np.std(drops):.2f} | {np.mean([f['mean_mflops'] for f in folds]):.1f} |")


if __name__ == "__main__":
    main()
