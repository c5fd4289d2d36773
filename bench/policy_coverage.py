"""How often does the early-exit policy's promise hold on images it never saw? (export/policy.py)

    python -m bench.policy_coverage [--checkpoint models/checkpoints/...pt] [--resamples 30] [--confidence 0.9]
    python -m bench.policy_coverage --onnx-model models/repository-int8/auxnet56_5-cifar10-int8   # its ONNX chain

The policy promises a drop of at most --max-drop-pp against the final exit, judged by cross-validation on the
validation split: on average (export's default), or with a confidence level (`export --promise-confidence`:
the held-out drop plus z standard errors within the promise). One validation/test split says little about
how often either holds: one test figure is one draw. Here the checkpoint's validation and test images (5,000 +
10,000 for CIFAR-10) are pooled and redrawn `--resamples` times into a calibration set of the validation split's
size and an unseen rest; each draw fits the temperatures and chooses the policy on its calibration set exactly
as export does (one confidence score, `--score`, with export's served rule between per-exit and shared
thresholds), then measures the drop and cost on the unseen rest. Row "as deployed" is the real split.

Nothing here chooses the deployed model or its thresholds: this measures a method, and the pooled images
include the test set for that reason only. Logits come from bench.policy_eval's cache (runs/policy_eval/); with
--onnx-model, from that published model's ONNX chain (e.g. the int8 twin) on the checkpoint's splits, cached
beside them.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from bench.policy_eval import DEFAULT_CKPT, ROOT, cache_path, split_logits
from export.calibration import fit_temperature, softmax
from export.policy import ExitScores, choose_policy, drop_standard_error, evaluate, fresh_set_miss_rate, paired_drop, served_rule
from export.quantize import chain_logits
from server.repository import load_manifest
from training.checkpoint import checkpoint_splits, load_checkpoint
from training.data.batches import iterate


def onnx_split_logits(model_dir: str, checkpoint: str, data_dir: str) -> dict:
    """split_logits' layout, from a published model's ONNX segments on the checkpoint's validation and test
    splits; cached under runs/policy_eval/ by the model's segment hashes."""
    info = load_manifest(model_dir)
    key = "-".join(e["sha256"][:6] for e in info.manifest["exits"])
    cache = ROOT / "runs" / "policy_eval" / f"{info.name}-{key}.npz"
    if cache.is_file():
        return dict(np.load(cache))
    ckpt = load_checkpoint(checkpoint)
    splits = checkpoint_splits(ckpt, data_dir)
    out = {"mflops": np.array([e.mflops for e in info.exits])}
    for name, ds in (("val", splits.val), ("test", splits.test)):
        logits, labels = chain_logits([e.onnx for e in info.exits], iterate(ds, splits, 256, False, 0, torch.device("cpu")))
        out.update({f"{name}_logits_{k}": z for k, z in enumerate(logits)})
        out[f"{name}_labels"] = labels.astype(np.int64)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def pooled(d: dict) -> tuple[list[np.ndarray], np.ndarray, int]:
    """Every exit's logits and the labels of validation then test, and the validation split's size."""
    k = sum(1 for key in d if key.startswith("val_logits_"))
    logits = [np.concatenate([d[f"val_logits_{i}"], d[f"test_logits_{i}"]]) for i in range(k)]
    return logits, np.concatenate([d["val_labels"], d["test_labels"]]), len(d["val_labels"])


def one_draw(logits: list[np.ndarray], labels: np.ndarray, calib: np.ndarray, unseen: np.ndarray, mflops: list[float],
             max_drop: float, score: str, confidence: float | None) -> dict:
    """Export's calibration on `calib` (temperatures, then the policy), judged on `unseen`."""
    temps = [fit_temperature(z[calib], labels[calib]) for z in logits]
    probs = [softmax(z / t) for z, t in zip(logits, temps)]
    chosen = choose_policy([p[calib] for p in probs], labels[calib], mflops, max_drop, score=score, confidence=confidence)
    rule = chosen[served_rule(chosen)]
    unseen_scores = ExitScores.from_probs([p[unseen] for p in probs], labels[unseen], score)
    r = evaluate(unseen_scores, rule["thresholds"], mflops)
    return {"thresholds": rule["thresholds"][:-1], "held_out_drop": rule["held_out"]["drop"],
            "held_out_se": rule["held_out"]["drop_se"], "kept_in_cv": rule["promise_kept_in_cross_validation"],
            "unseen_drop": r["drop"], "unseen_se": drop_standard_error(paired_drop(unseen_scores, rule["thresholds"])),
            "unseen_mflops": r["mean_mflops"],
            # export's fresh_set_miss_rate, for a fresh set the size of this draw's unseen images
            "predicted_miss": fresh_set_miss_rate(ExitScores.from_probs([p[calib] for p in probs], labels[calib], score),
                                                  rule["thresholds"], rule["held_out"]["drop"], max_drop, len(unseen))}


def _task(args) -> tuple[int, str, dict]:
    draw, setting, logits, labels, calib, unseen, mflops, max_drop, score, confidence = args
    return draw, setting, one_draw(logits, labels, calib, unseen, mflops, max_drop, score, confidence)


def summary(rows: list[dict], max_drop: float, final_mflops: float) -> str:
    drops = np.array([r["unseen_drop"] for r in rows])
    return (f"| {len(rows)} | {100 * np.mean([r['held_out_drop'] for r in rows]):.2f} | "
            f"{100 * np.mean([r['held_out_se'] for r in rows]):.2f} | {100 * drops.mean():.2f} | {100 * drops.std(ddof=1):.2f} | "
            f"{100 * np.mean([r['unseen_se'] for r in rows]):.2f} | {np.mean(drops > max_drop + 1e-12):.0%} | "
            f"{np.mean([r['predicted_miss'] for r in rows]):.0%} | "
            f"{np.mean([r['unseen_mflops'] for r in rows]) / final_mflops:.3f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(DEFAULT_CKPT))
    p.add_argument("--onnx-model", help="a published model REPO/NAME whose ONNX chain answers (its source: --checkpoint)")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg"))
    p.add_argument("--max-drop-pp", type=float, default=0.5)
    p.add_argument("--confidence", type=float, nargs="*", default=[0.9],
                   help="promise levels to compare with the promise on average (default 0.9)")
    p.add_argument("--score", choices=("top1", "margin"), default="top1")
    p.add_argument("--resamples", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    if args.resamples < 2:
        raise SystemExit("--resamples must be at least 2 (a spread needs two draws)")
    if args.onnx_model:
        d = onnx_split_logits(args.onnx_model, args.checkpoint, args.data_dir)
    else:
        d = split_logits(Path(args.checkpoint), args.data_dir, cache_path(args.checkpoint))
    logits, labels, n_val = pooled(d)
    mflops = [float(m) for m in d["mflops"]]
    max_drop = args.max_drop_pp / 100
    settings = {"on average": None, **{f"confidence {c:g}": c for c in args.confidence}}
    rng = np.random.default_rng(args.seed)
    splits = [(np.arange(n_val), np.arange(n_val, len(labels)))]  # draw 0: as deployed
    for _ in range(args.resamples):
        perm = rng.permutation(len(labels))
        splits.append((np.sort(perm[:n_val]), np.sort(perm[n_val:])))
    tasks = [(i, name, logits, labels, calib, unseen, mflops, max_drop, args.score, c)
             for i, (calib, unseen) in enumerate(splits) for name, c in settings.items()]
    start = time.time()
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(_task, tasks))
    print(f"{args.onnx_model or Path(args.checkpoint).name}: {n_val} calibration / {len(labels) - n_val} unseen images a draw, "
          f"{args.resamples} draws + the deployed split, score {args.score}, promise <= {args.max_drop_pp} pp, "
          f"final exit {mflops[-1]:.1f} MFLOPs ({time.time() - start:.0f} s, {args.workers} workers)\n")
    print("| promise | draw | thresholds | held-out drop pp (+- se) | predicted P(unseen drop > promise) | unseen drop pp (+- se) "
          "| x final cost |")
    print("|---|---|---|---:|---:|---:|---:|")
    for draw, name, r in results:
        if draw == 0:
            print(f"| {name} | as deployed (val -> test) | {r['thresholds']} | {100 * r['held_out_drop']:.2f} +- "
                  f"{100 * r['held_out_se']:.2f} | {r['predicted_miss']:.0%} | {100 * r['unseen_drop']:.2f} +- "
                  f"{100 * r['unseen_se']:.2f} | {r['unseen_mflops'] / mflops[-1]:.3f} |")
    print("\n| promise | draws | mean held-out drop pp | mean held-out se pp | mean unseen drop pp | sd of unseen drop pp "
          "| mean unseen se pp | unseen drop > promise | predicted (export's fresh_set_miss_rate) | mean x final cost |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in settings:
        print(f"| {name} " + summary([r for draw, s, r in results if s == name and draw > 0], max_drop, mflops[-1]))


if __name__ == "__main__":
    main()
