"""Choose the model to serve among trained candidates, on the validation split only (issue 10):

    python -m export choose --checkpoint runs/a --checkpoint runs/c ... --out models/repository --name NAME

Each candidate is exported and calibrated as `export all` does (its policy promises at most --max-drop-pp
below its own final exit, out of sample, on its validation split). The rule: a candidate is eligible when
its early-exit accuracy (the policy's, on validation) is within --max-drop-pp of the best candidate's, so
cost is never bought with more accuracy than the policy itself may lose; among the eligible, the least mean
MFLOPs per image under the policy wins (early-exit cost first), and a cost within 1% of the least is a tie
broken by final-exit validation accuracy. The test set is never read. The winner is published under NAME
and checked.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

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


def evaluate(checkpoint: str, data_dir: str | None, max_drop_pp: float, log=print) -> Candidate:
    """Export and calibrate one candidate in a scratch repository; read what the manifest says."""
    from export.build import export_model

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = export_model(checkpoint, scratch, "candidate", data_dir, measure=False, max_drop_pp=max_drop_pp,
                                 log=lambda *a: None)
        m = json.loads((Path(model_dir) / "manifest.json").read_text())
    p = m["policy"]
    c = Candidate(checkpoint, m["architecture"], str(m.get("training", {}).get("method", "")), float(p["val_accuracy"]),
                  float(p["final_exit_val_accuracy"]), float(p["mean_mflops"]), float(m["exits"][-1]["mflops"]),
                  bool(p.get("promise_kept_in_cross_validation", True)))
    log(f"  {checkpoint}: {c.architecture} {c.method}: policy {100 * c.policy_val_accuracy:.2f}% at "
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


def choose(checkpoints: list[str], repo: str, name: str, data_dir: str | None = None, max_drop_pp: float = 0.5,
           log=print) -> Candidate:
    from export.build import export_model
    from export.check import check_model

    if len(set(checkpoints)) < 2:
        raise ValueError(f"choose needs at least two different candidates; got {checkpoints}")
    log(f"candidates, calibrated on their validation splits (policy promise: <= {max_drop_pp} pp):")
    candidates = [evaluate(c, data_dir, max_drop_pp, log) for c in checkpoints]
    ranked = rank(candidates, max_drop_pp)
    winner = ranked[0]
    log(f"chosen: {winner.checkpoint} ({len(ranked)} of {len(candidates)} eligible)")
    model_dir = export_model(winner.checkpoint, repo, name, data_dir, max_drop_pp=max_drop_pp, log=log)
    problems = check_model(str(model_dir), winner.checkpoint, log=log)
    if problems:
        raise RuntimeError(f"the exported {model_dir} failed its check: {problems}")
    return winner
