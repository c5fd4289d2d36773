"""Early-exit policies judged on the test set (issue 13): each is chosen on the validation split only, then
its accuracy drop against the final exit and its mean MFLOPs are measured on the 10,000 test images.

    python -m bench.policy_eval [--checkpoint models/checkpoints/...pt] [--data-dir ../shared/data/cifar10-jpeg]
                                [--max-drop-pp 0.5]

Rules compared: the old one (one shared threshold chosen and reported on all of the validation split),
the shared threshold with the cross-validated margin, and per-exit thresholds with the margin, each on both
policy scores (the calibrated top-1 probability; top-1 minus top-2); "(served)" marks what export serves
(export/build.py's make_policy). Logits are cached under runs/policy_eval/ so a rerun takes seconds.

--compare-scores: which number should an exit's confidence be? The server stops on the calibrated top-1
probability; here the same per-exit rule (thresholds chosen on validation with the cross-validated margin)
runs on other scores of the same exits, each judged on the test set: the margin between the top two
probabilities, one minus the normalised entropy, and an ensemble of every exit so far (the mean of their
log-probabilities, which also changes the answer; the final exit answers alone, as served).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import torch

from export.build import model_from_checkpoint
from export.calibration import fit_temperature, softmax
from export.policy import (
    ExitScores,
    best_shared_threshold,
    choose_policy,
    cross_validated,
    evaluate,
    optimise_thresholds,
    served_rule,
    served_score,
)
from server.policy import POLICY_SCORES
from training.checkpoint import checkpoint_splits, load_checkpoint
from training.data.batches import iterate
from training.engine import collect_logits
from training.model import segment_costs

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CKPT = ROOT / "models" / "checkpoints" / "auxnet56_5-pool4-mlp512-multiway-distill-cosine-cifar10jpeg-160ep-seed0.pt"


def cache_path(checkpoint: str) -> Path:
    """Where split_logits keeps a checkpoint's logits: named by its file and a hash of its full path, size and
    time, so two runs' last.pt never share one."""
    f = Path(checkpoint).resolve()
    st = f.stat()
    key = hashlib.sha1(f"{f}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:10]
    return ROOT / "runs" / "policy_eval" / f"{f.stem}-{key}.npz"


def split_logits(checkpoint: Path, data_dir: str, cache: Path) -> dict:
    if cache.is_file():
        return dict(np.load(cache))
    ckpt = load_checkpoint(str(checkpoint))
    model = model_from_checkpoint(ckpt, str(checkpoint))
    splits = checkpoint_splits(ckpt, data_dir)
    out = {}
    with torch.no_grad():
        for name, ds in (("val", splits.val), ("test", splits.test)):
            logits, labels = collect_logits(model, iterate(ds, splits, 256, False, 0, torch.device("cpu")))
            for k, z in enumerate(logits):
                out[f"{name}_logits_{k}"] = z.numpy().astype(np.float64)
            out[f"{name}_labels"] = labels.numpy()
    out["mflops"] = np.array([c["mflops"] for c in segment_costs(model)])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def score_variants(probs: list[np.ndarray], labels: np.ndarray) -> dict[str, ExitScores]:
    """The same exits under other confidence scores (see --compare-scores); each score lies in [0, 1]."""
    pred = np.stack([p.argmax(axis=1) for p in probs])
    entropy = [-(p * np.log(np.clip(p, 1e-12, None))).sum(axis=1) / np.log(p.shape[1]) for p in probs]
    logp = np.cumsum([np.log(np.clip(p, 1e-12, None)) for p in probs], axis=0)
    ensemble = [softmax(logp[k] / (k + 1)) for k in range(len(probs) - 1)] + [probs[-1]]
    return {"calibrated top-1 probability": ExitScores.from_probs(probs, labels),
            "top-1 minus top-2 probability": ExitScores.from_probs(probs, labels, "margin"),  # the served "margin"
            "1 - normalised entropy": ExitScores(np.stack([1 - h for h in entropy]), pred == labels[None], pred),
            "ensemble of the exits so far, its top-1": ExitScores.from_probs(ensemble, labels)}


def compare_scores(val_p, val_labels, test_p, test_labels, mflops, drops_pp) -> None:
    val_v, test_v = score_variants(val_p, val_labels), score_variants(test_p, test_labels)
    print("\n| confidence score | promised drop pp | thresholds | cross-validated drop pp | test drop pp | "
          "test mean MFLOPs | x final cost |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for pp in drops_pp:
        for name, sv in val_v.items():
            cv = cross_validated(sv, mflops, pp / 100, optimise_thresholds, 0)
            t = optimise_thresholds(sv, mflops, pp / 100 - cv["margin"])
            r = evaluate(test_v[name], [*t, 0.0], mflops)
            print(f"| {name} | {pp} | {t} | {100 * cv['held_out']['drop']:.2f} | {100 * r['drop']:.2f} | "
                  f"{r['mean_mflops']:.1f} | {r['mean_mflops'] / mflops[-1]:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default=str(DEFAULT_CKPT))
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg"))
    p.add_argument("--max-drop-pp", type=float, default=0.5)
    p.add_argument("--sweep-pp", type=float, nargs="*", default=[0.25, 0.5, 1.0, 2.0, 4.0],
                   help="also compare both rules (cross-validated) at these promised drops")
    p.add_argument("--compare-scores", action="store_true", help="also compare confidence scores (module docstring)")
    args = p.parse_args()
    d = split_logits(Path(args.checkpoint), args.data_dir, cache_path(args.checkpoint))
    k = sum(1 for key in d if key.startswith("val_logits_"))
    mflops = [float(m) for m in d["mflops"]]
    val = [d[f"val_logits_{i}"] for i in range(k)]
    temps = [fit_temperature(z, d["val_labels"]) for z in val]
    val_p = [softmax(z / t) for z, t in zip(val, temps)]
    test_p = [softmax(d[f"test_logits_{i}"] / t) for i, t in enumerate(temps)]
    drop = args.max_drop_pp / 100
    by_score = {score: choose_policy(val_p, d["val_labels"], mflops, drop, score=score) for score in POLICY_SCORES}
    served = served_score(by_score), served_rule(by_score[served_score(by_score)])
    test_s = {score: ExitScores.from_probs(test_p, d["test_labels"], score) for score in POLICY_SCORES}
    val_top1 = ExitScores.from_probs(val_p, d["val_labels"])
    rules = {("top1", "shared threshold, chosen and reported on all of validation (old default)"):
             [*best_shared_threshold(val_top1, mflops, drop), 0.0]}
    for score, chosen in by_score.items():
        for rule in ("shared", "per_exit"):
            mark = " (served)" if (score, rule) == served else ""
            what = "per-exit thresholds" if rule == "per_exit" else "shared threshold"
            rules[score, f"{what}, cross-validated margin{mark}"] = chosen[rule]["thresholds"]
    print(f"checkpoint {Path(args.checkpoint).name}; val {val_top1.n} / test {test_s['top1'].n} images; promise: drop <= "
          f"{args.max_drop_pp} pp; final exit {mflops[-1]:.1f} MFLOPs, test accuracy "
          f"{100 * test_s['top1'].correct[-1].mean():.2f}%; served: {served[0]} score, {served[1].replace('_', '-')} rule")
    print("| score | rule | thresholds | promised (val) drop pp | val mean MFLOPs | test accuracy | test drop pp | "
          "test mean MFLOPs | x final cost | test exit rates |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    for (score, name), t in rules.items():
        v, r = evaluate(ExitScores.from_probs(val_p, d["val_labels"], score), t, mflops), evaluate(test_s[score], t, mflops)
        held = by_score[score]["per_exit" if "per-exit" in name else "shared"]["held_out"]["drop"] if "margin" in name else v["drop"]
        rates = " / ".join(f"{100 * x:.0f}%" for x in r["exit_rates"])
        print(f"| {score} | {name} | {t[:-1]} | {100 * held:.2f} | {v['mean_mflops']:.1f} | {100 * r['accuracy']:.2f}% | "
              f"{100 * r['drop']:.2f} | {r['mean_mflops']:.1f} | {r['mean_mflops'] / mflops[-1]:.2f} | {rates} |")

    print("\n| promised drop pp | score | rule | thresholds | test drop pp | test mean MFLOPs | x final cost |")
    print("|---:|---|---|---|---:|---:|---:|")
    for pp in args.sweep_pp:
        by = {score: choose_policy(val_p, d["val_labels"], mflops, pp / 100, score=score) for score in POLICY_SCORES}
        for score, c in by.items():
            for rule in ("shared", "per_exit"):
                r = evaluate(test_s[score], c[rule]["thresholds"], mflops)
                mark = " (served)" if (score, rule) == (served_score(by), served_rule(by[served_score(by)])) else ""
                print(f"| {pp} | {score} | {rule.replace('_', '-')}{mark} | {c[rule]['thresholds'][:-1]} | "
                      f"{100 * r['drop']:.2f} | {r['mean_mflops']:.1f} | {r['mean_mflops'] / mflops[-1]:.2f} |")

    if args.compare_scores:
        compare_scores(val_p, d["val_labels"], test_p, d["test_labels"], mflops, [0.5, 1.0])


if __name__ == "__main__":
    main()
