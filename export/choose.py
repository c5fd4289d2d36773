"""Choose the model to serve among trained candidates, on the validation split only (issue 10):

    python -m export choose --checkpoint runs/a --checkpoint runs/c ... --out models/repository --name NAME

Each candidate is exported and calibrated as `export all` does (its policy promises at most --max-drop-pp
below its own final exit, out of sample, on its validation split). The rule: a candidate is eligible when
its early-exit accuracy (the policy's, on validation) is within --max-drop-pp of the best candidate's, so
cost is never bought with more accuracy than the policy itself may lose; among the eligible, the least mean
MFLOPs per image under the policy wins (early-exit cost first), and a cost within 1% of the least is a tie
broken by final-exit validation accuracy. The test set is never read. The winner is published under NAME
and checked; with --dry-run nothing is published, and a table says how every candidate ranked and why.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from training.run import RECIPE_DEFAULTS

COST_TIE = 0.01  # costs within 1% of the least count as equal: final accuracy decides


@dataclass(frozen=True)
class Candidate:
    checkpoint: str
    architecture: str
    method: str
    policy_val_accuracy: float  # early-exit accuracy under the policy, validation split
    final_val_accuracy: float
    policy_mean_mflops: float
    final_mflops: float
    promise_kept: bool  # cross-validation kept the policy's promise
    exit_val_accuracy: tuple[float, ...] = ()  # top-1 of each exit alone, validation split
    held_out_drop: float | None = None  # the policy's cross-validated drop against the final exit
    recipe: str = ""  # the recipe options that differ from the paper's ("" = the paper's recipe)
    policy_score: str = "top1"  # what its thresholds are compared with (server/policy.py)


def evaluate(checkpoint: str, data_dir: str | None, max_drop_pp: float, log=print,
             promise_confidence: float | None = None) -> Candidate:
    """Export and calibrate one candidate in a scratch repository; read what the manifest says."""
    from export.build import export_model

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = export_model(checkpoint, scratch, "candidate", data_dir, measure=False, max_drop_pp=max_drop_pp,
                                 log=lambda *a: None, promise_confidence=promise_confidence)
        m = json.loads((Path(model_dir) / "manifest.json").read_text())
    p, training = m["policy"], m.get("training", {})
    recipe = " ".join(f"{k}={v}" for k, v in training.get("recipe", {}).items() if v != RECIPE_DEFAULTS.get(k))
    if heads := training.get("auxiliary_heads_retrained"):
        recipe = f"{recipe} heads retrained (pool {heads['pool']}, {heads['views']} views x {heads['epochs']} epochs)".strip()
    c = Candidate(checkpoint, m["architecture"], str(training.get("method", "")), float(p["val_accuracy"]),
                  float(p["final_exit_val_accuracy"]), float(p["mean_mflops"]), float(m["exits"][-1]["mflops"]),
                  bool(p.get("promise_kept_in_cross_validation", True)), tuple(float(e["val_top1"]) for e in m["exits"]),
                  p.get("held_out", {}).get("drop"), recipe, str(p.get("score", "top1")))
    log(f"  {checkpoint}: {c.architecture} {c.method}: policy ({c.policy_score}) {100 * c.policy_val_accuracy:.2f}% at "
        f"{c.policy_mean_mflops:.1f} MFLOPs, final {100 * c.final_val_accuracy:.2f}% at {c.final_mflops:.1f}")
    return c


def rank(candidates: list[Candidate], max_drop_pp: float) -> list[Candidate]:
    """Eligible candidates best first (see the module docstring); the ineligible are left out."""
    kept = [c for c in candidates if c.promise_kept]
    if not kept:
        raise ValueError("no candidate's policy kept its promise in cross-validation; export with a larger --max-drop-pp")
    best = max(c.policy_val_accuracy for c in kept)
    eligible = [c for c in kept if c.policy_val_accuracy >= best - max_drop_pp / 100 - 1e-12]
    least = min(c.policy_mean_mflops for c in eligible)
    return sorted(eligible, key=lambda c: (c.policy_mean_mflops > least * (1 + COST_TIE), -c.final_val_accuracy,
                                           c.policy_mean_mflops))


def verdicts(candidates: list[Candidate], max_drop_pp: float) -> list[str]:
    """Why each candidate ranked where it did, in the order given: 'chosen', 'eligible #k', or why not."""
    ranked = rank(candidates, max_drop_pp)
    best = max(c.policy_val_accuracy for c in candidates if c.promise_kept)
    out = []
    for c in candidates:
        if c in ranked:
            out.append("chosen" if c is ranked[0] else f"eligible #{ranked.index(c) + 1}")
        elif not c.promise_kept:
            out.append("not eligible: its policy broke its promise in cross-validation")
        else:
            out.append(f"not eligible: policy {100 * (best - c.policy_val_accuracy):.2f} pp below the best")
    return out


def table(candidates: list[Candidate], max_drop_pp: float) -> list[str]:
    """A markdown table of every candidate on its validation split, with its verdict."""
    rows = ["| candidate | network | method | recipe beyond the paper | top-1 per exit, val (%) | policy score "
            "| policy val top-1 (%) | held-out drop (pp) | mean MFLOPs | x final | verdict |",
            "|---|---|---|---|---|---|---:|---:|---:|---:|---|"]
    for c, verdict in zip(candidates, verdicts(candidates, max_drop_pp)):
        drop = "-" if c.held_out_drop is None else f"{100 * c.held_out_drop:.2f}"
        rows.append(f"| {c.checkpoint} | {c.architecture} | {c.method} | {c.recipe or '-'} | "
                    f"{' / '.join(f'{100 * a:.1f}' for a in c.exit_val_accuracy) or '-'} | {c.policy_score} | "
                    f"{100 * c.policy_val_accuracy:.2f} | "
                    f"{drop} | {c.policy_mean_mflops:.1f} | {c.policy_mean_mflops / c.final_mflops:.2f} | {verdict} |")
    return rows


def choose(checkpoints: list[str], repo: str | None, name: str | None, data_dir: str | None = None,
           max_drop_pp: float = 0.5, log=print, dry_run: bool = False, promise_confidence: float | None = None) -> Candidate:
    from export.build import export_model
    from export.check import check_model

    if len(set(checkpoints)) < 2:
        raise ValueError(f"choose needs at least two different candidates; got {checkpoints}")
    if not dry_run and not (repo and name):
        raise ValueError("choose publishes the winner: give --out and --name (or --dry-run to only rank)")
    level = "on average" if promise_confidence is None else f"with {promise_confidence:g} confidence"
    log(f"candidates, calibrated on their validation splits (policy promise: <= {max_drop_pp} pp, {level}):")
    candidates = [evaluate(c, data_dir, max_drop_pp, log, promise_confidence) for c in checkpoints]
    ranked = rank(candidates, max_drop_pp)
    winner = ranked[0]
    log(f"chosen: {winner.checkpoint} ({len(ranked)} of {len(candidates)} eligible)")
    if dry_run:
        log("\n".join(["", *table(candidates, max_drop_pp), "", "--dry-run: nothing published"]))
        return winner
    model_dir = export_model(winner.checkpoint, repo, name, data_dir, max_drop_pp=max_drop_pp, log=log,
                             promise_confidence=promise_confidence)
    problems = check_model(str(model_dir), winner.checkpoint, log=log)
    if problems:
        raise RuntimeError(f"the exported {model_dir} failed its check: {problems}")
    return winner
