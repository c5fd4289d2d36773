"""Size bench/gpu/paper_runs.sh's plan from its speed probes: how many runs to start side by side, and for how
many epochs, so that every run started finishes its whole schedule within the call.

    python -m bench.gpu.plan_runs RUNS SECONDS_LEFT MIN_EPOCHS MAX_EPOCHS NAME...

RUNS holds probe1/metrics.jsonl (one run alone, two evaluated epochs) and probe_all_<n>/metrics.jsonl (NAME
number n, all side by side, short unevaluated epochs, each row stamped with its wall time). Prints what it
measured, then as its last line: runs epochs NAME... (the names whose probes worked, in the order given).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

TRAIN_IMAGES = 45_000  # CIFAR-10 less the 5,000 validation images
MARGIN = 0.9  # of the time left, for what the probes did not see (checkpoints, stragglers)


def read_rows(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def shared_throughput(probes: dict[str, list[dict]]) -> tuple[float, float]:
    """Images/s of all probes together, counted over the seconds in which every one was past its first epoch
    (compiled, warmed up): a probe that compiles fast would otherwise time its steps while the others still
    compile, and the sum of such rates overstates what they share. Returns (images/s, seconds of that window);
    with no common window, the sum of the last rates and 0."""
    t0 = max(rows[0]["time"] for rows in probes.values())
    t1 = min(rows[-1]["time"] for rows in probes.values())
    if t1 <= t0:
        return sum(rows[-1]["images_per_s"] for rows in probes.values()), 0.0
    images = sum(r["images_per_s_with_warmup"] * r["train_s"] for rows in probes.values() for r in rows
                 if t0 < r["time"] <= t1)
    return images / (t1 - t0), t1 - t0


def plan(runs: Path, left_s: float, min_epochs: int, max_epochs: int, names: list[str]) -> tuple[list[str], int, int]:
    """Report lines, then (runs to start, epochs): the most runs, in the order given, whose share of the
    measured throughput fits min_epochs (training plus evaluation an epoch) in what is left after the warm-up
    and the first evaluation's compiling; as many epochs as fit, up to max_epochs. One run is started even
    when it fits fewer than min_epochs."""
    alone_rows = read_rows(runs / "probe1" / "metrics.jsonl")
    if len(alone_rows) < 2:
        raise SystemExit(f"{runs / 'probe1'}: the run alone finished {len(alone_rows)} of its two epochs (probe1.log): "
                         "no speed to size the plan from")
    first, second = alone_rows[:2]
    alone, eval_s = second["images_per_s"], second["eval_s"]
    eval_compile_s = max(0.0, first["eval_s"] - second["eval_s"])
    report, probes = [], {}
    for n, name in enumerate(names):
        rows = read_rows(runs / f"probe_all_{n}" / "metrics.jsonl")
        if len(rows) >= 2:
            probes[name] = rows
        else:
            report.append(f"probe of {name} failed (probe_all_{n}.log): not started")
    if not probes:
        raise SystemExit("no side-by-side probe finished two epochs: nothing to start")
    ok = [name for name in names if name in probes]
    together, window_s = shared_throughput(probes)
    warmup = max(0.0, *(rows[0]["train_s"] * (1 - rows[0]["images_per_s_with_warmup"] / rows[0]["images_per_s"])
                        for rows in probes.values()))
    report.append(f"throughput: one run alone {alone:.0f} img/s (evaluation {eval_s:.1f} s an epoch, "
                  f"{eval_compile_s:.0f} s more the first time); {len(ok)} side by side {together:.0f} img/s in all, "
                  + (f"over {window_s:.0f} s in which all ran" if window_s else
                     "no common window: the sum of their last rates (an overestimate)")
                  + f"; warm-up {warmup:.0f} s; {left_s:.0f} s left")
    k, best = len(ok), None
    for n in range(1, k + 1):
        per_run = alone if n == 1 else together / k * min(1.0, k / n)  # measured at k; fewer share it out
        epoch_s = (TRAIN_IMAGES + eval_s * alone) / per_run  # evaluation slowed by the same share
        epochs = int(MARGIN * (left_s - warmup - eval_compile_s) / epoch_s)
        if epochs >= min_epochs or n == 1:  # n == 1 always sets it: one run is started even below the floor
            best = (n, max(1, min(epochs, max_epochs)))
    return report + [f"{best[0]} {best[1]} {' '.join(ok)}"], best[0], best[1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.gpu.plan_runs", description="Size paper_runs.sh's plan from its "
                                "speed probes; the last line printed is: runs epochs NAME...")
    p.add_argument("runs", type=Path, help="the folder holding probe1/ and probe_all_<n>/")
    p.add_argument("seconds_left", type=float)
    p.add_argument("min_epochs", type=int)
    p.add_argument("max_epochs", type=int)
    p.add_argument("names", nargs="+", help="the runs probed side by side, in priority order")
    args = p.parse_args(argv)
    # seconds_left may be <= 0 (probes overran): one run is still planned, as plan() promises
    if not math.isfinite(args.seconds_left) or not 1 <= args.min_epochs <= args.max_epochs:
        p.error(f"need a finite seconds_left and 1 <= min_epochs <= max_epochs, got {args.seconds_left} "
                f"{args.min_epochs} {args.max_epochs}")
    lines, _, _ = plan(args.runs, args.seconds_left, args.min_epochs, args.max_epochs, args.names)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
