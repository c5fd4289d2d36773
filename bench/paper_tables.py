"""Our CIFAR runs beside the paper's figures, in the layouts of Guo et al.'s Tables 1, 2 and 6
(../shared/paper/the-shallow-end.md), each of our rows labelled with its epochs, seed and data.

    python -m bench.paper_tables --runs bench/results/h200_cifar10jpeg_30ep
    python -m bench.paper_tables --runs /tmp/paper_runs          # bench/gpu/paper_runs.sh's layout
    python -m bench.paper_tables --runs bench/results/h200_cifar10jpeg_53ep \
        --heads a_multiway=bench/results/heads_2026-12-01/heads_a_multiway_pool4.json ...

A run is NAME.cmd (the training command) with NAME.metrics.jsonl or NAME/metrics.jsonl beside it; its last
row gives the errors. The paper trained 400 epochs on the original binary CIFAR; ours say what they had.
`--heads RUN=FILE` adds run RUN with its auxiliary heads retrained by `python -m training.heads` (FILE: the
heads.json it wrote, with the test errors) as one more Table 6 column; Tables 1 and 2 are unchanged by it,
since the final output and the trunk stay bit-identical.
"""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from training.presets import PRESETS

# Table 1 (CIFAR-10, final output, error %): (network, method) -> error.
PAPER_TABLE1 = {
    ("ResNet-44", "none"): 6.37, ("ResNet-56", "none"): 6.08,
    ("AuxNet-44-3", "joint"): 6.00, ("AuxNet-56-5", "joint"): 5.89,
    ("AuxNet-44-3", "pairwise"): 6.45, ("AuxNet-56-5", "pairwise"): 6.22,
    ("AuxNet-44-3", "multiway"): 5.85, ("AuxNet-56-5", "multiway"): 5.53,
}
# Table 2 (error %, CIFAR-10, CIFAR-100); ResNets are He et al.'s figures as the paper quotes them.
PAPER_TABLE2 = {
    "ResNet-20": (7.76, 31.12), "ResNet-32": (6.81, 29.74), "ResNet-44": (6.37, 28.85), "ResNet-56": (6.08, 28.46),
    "ResNet-110": (5.86, 27.41), "AuxNet-20-2": (7.78, 30.44), "AuxNet-32-2": (6.83, 28.24),
    "AuxNet-44-2": (6.12, 27.46), "AuxNet-44-3": (5.85, 27.19), "AuxNet-56-2": (5.77, 26.83),
    "AuxNet-56-5": (5.53, 26.62), "AuxNet-56-2/2": (4.77, 22.95), "AuxNet-56-5/2": (4.51, 22.57),
    "AuxNet-26-2/10": (3.77, 19.69),
}
# Table 6 (CIFAR-10, error %), outputs at layers 15, 25, 35, 45, 56: AuxNet-56-5, and ResNet-56's layers.
# (The paper's ResNet-56 is 6.56% here and 6.08% in Tables 1 and 2; both are quoted as printed.)
PAPER_TABLE6 = {"AuxNet": (50.35, 18.94, 9.23, 5.67, 5.53), "ResNet": (63.01, 45.07, 34.01, 13.71, 6.56)}
TABLE6_LAYERS = (15, 25, 35, 45, 56)
RECIPE_FLAGS = ("--schedule", "--warmup-epochs", "--label-smoothing", "--distill-weight", "--distill-temperature",
                "--ema-decay", "--joint-lr-adjust", "--joint-match-multiway-decay", "--preact-shortcut", "--nu",
                "--shortcut-scale")


@dataclass
class Run:
    name: str
    network: str  # the paper's name: ResNet-56, AuxNet-56-5, AuxNet-56-5/2
    method: str
    exits: tuple[int, ...]
    recipe: str  # flags beyond the paper's recipe, "" when none
    planned_epochs: int
    seed: int
    data: str
    last: dict  # the last metrics row
    heads: str = ""  # the auxiliary heads' retraining (training.heads), "" for the run's own heads

    @property
    def label(self) -> str:
        done = self.last["epoch"]
        epochs = f"{done} ep" if done == self.planned_epochs else f"{done} of {self.planned_epochs} ep"
        return f"{epochs}, seed {self.seed}, {self.data}"


def paper_name(preset: str, method: str) -> tuple[str, tuple[int, ...]]:
    family, depth, exits, width = PRESETS[preset]
    wide = f"/{width}" if width > 1 else ""
    # method none trains the trunk alone (auxiliary heads only as detached probes): the paper's plain ResNet.
    return (f"ResNet-{depth}{wide}" if method == "none" or len(exits) == 1 else f"AuxNet-{depth}-{len(exits)}{wide}"), exits


def load_run(cmd_file: Path) -> Run | None:
    name = cmd_file.stem
    metrics = next((p for p in (cmd_file.with_name(f"{name}.metrics.jsonl"), cmd_file.with_name(name) / "metrics.jsonl")
                    if p.exists()), None)
    if metrics is None:
        return None
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "test_top1_err" in r]
    argv = shlex.split(cmd_file.read_text().strip())
    opts = {a: argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else "" for i, a in enumerate(argv)
            if a.startswith("--")}
    if not rows or opts.get("--preset") not in PRESETS:
        return None
    method = opts.get("--method", "multiway")
    network, exits = paper_name(opts["--preset"], method)
    recipe = " ".join(f"{k} {opts[k]}".strip() for k in RECIPE_FLAGS if k in opts)
    data = Path(opts.get("--data-dir", opts.get("--dataset", "?"))).name or "?"
    return Run(name, network, method, exits, recipe, int(opts.get("--epochs", 1)), int(opts.get("--seed", 0)), data,
               rows[-1])


def with_heads(runs: list[Run], spec: str) -> Run:
    """`RUN=FILE`: run RUN's row with its auxiliary outputs' test errors from training.heads' heads.json."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--heads {spec!r}: expected RUN=FILE, e.g. a_multiway=runs/a_multiway_pool4/heads.json")
    run = next((r for r in runs if r.name == name), None)
    if run is None:
        raise ValueError(f"--heads {spec!r}: no run named {name!r} (runs: {', '.join(r.name for r in runs) or 'none'})")
    record = json.loads(Path(path).read_text())
    if not isinstance(record, dict) or any(k not in record for k in ("pool", "epochs", "views")):
        raise ValueError(f"--heads {spec!r}: {path} is not a heads.json of training.heads (pool, epochs, views)")
    errs = record.get("test_top1_err")
    if not isinstance(errs, list) or len(errs) != len(run.exits):
        raise ValueError(f"--heads {spec!r}: {path} has no test_top1_err for {len(run.exits)} outputs "
                         "(heads.json from training.heads of 2026-12-01 or later; the earlier ones print them in their log)")
    hidden = f" with {record['hidden']} hidden units" if record.get("hidden") else ""
    heads = f"{record['pool']}x{record['pool']} heads{hidden}, {record['epochs']} ep on {record['views']} views"
    return Run(run.name, run.network, run.method, run.exits, run.recipe, run.planned_epochs, run.seed, run.data,
               {**run.last, "test_top1_err": errs}, heads)


def _heads_label(r: Run) -> str:
    if not r.heads:
        return ""
    return " + grid MLP heads" if "hidden units" in r.heads else " + grid heads"


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def table1(runs: list[Run]) -> list[str]:
    out = ["| network | method | recipe beyond the paper | ours: test err (%) | paper, Table 1 | ours: run |",
           "|---|---|---|---:|---:|---|"]
    order = {"none": 0, "joint": 1, "pairwise": 2, "multiway": 3}  # the paper's row order
    for r in sorted(runs, key=lambda r: (order.get(r.method, 4), r.network, r.recipe)):
        paper = PAPER_TABLE1.get((r.network, r.method)) if not r.recipe else None
        out.append(f"| {r.network} | {r.method} | {r.recipe or '-'} | {_fmt(r.last['test_top1_err'][-1])} | "
                   f"{_fmt(paper)} | {r.label} |")
    return out


def table2(runs: list[Run], cifar100: bool) -> list[str]:
    column = 1 if cifar100 else 0
    out = [f"| network | outputs | ours: test err (%) | paper, Table 2 ({'CIFAR-100' if cifar100 else 'CIFAR-10'}) | ours: run |",
           "|---|---|---:|---:|---|"]
    paper_method = {"ResNet": "none", "AuxNet": "multiway"}
    for r in sorted(runs, key=lambda r: r.network):
        if r.recipe or paper_method[r.network.split("-")[0]] != r.method:
            continue  # Table 2 is the paper's method and recipe only
        paper = PAPER_TABLE2.get(r.network)
        outputs = "{" + ", ".join(str(e) for e in reversed(r.exits)) + "}" if r.method != "none" else f"{{{r.exits[-1]}}}"
        out.append(f"| {r.network} | {outputs} | {_fmt(r.last['test_top1_err'][-1])} | "
                   f"{_fmt(paper[column] if paper else None)} | {r.label} |")
    return out


def table6(runs: list[Run]) -> list[str]:
    """Every run with outputs at Table 6's layers, one column each, beside the paper's two columns."""
    cols = [r for r in runs if r.exits == TABLE6_LAYERS]
    if not cols:
        return ["(no run with outputs at layers 15, 25, 35, 45, 56)"]
    # Each column by its run's own name (and its heads): letters (a), (b), ... read as the runs a..e, which
    # they were not once the CPU's runs stood beside the lease's ("(d)" was run c at 160 epochs).
    keys = [f"{r.name}{_heads_label(r)}" for r in cols]
    heads = [f"ours: {key} ({'ResNet, probes' if r.method == 'none' else r.method}{', recipe' if r.recipe else ''}, "
             f"{r.last['epoch']} ep)" for key, r in zip(keys, cols)]
    out = ["| output | " + " | ".join(heads) + " | paper: AuxNet | paper: ResNet |",
           "|---|" + "---:|" * (len(cols) + 2)]
    for k in reversed(range(len(TABLE6_LAYERS))):
        ours = " | ".join(_fmt(r.last["test_top1_err"][k]) for r in cols)
        out.append(f"| output-{TABLE6_LAYERS[k]} | {ours} | {_fmt(PAPER_TABLE6['AuxNet'][k])} | "
                   f"{_fmt(PAPER_TABLE6['ResNet'][k])} |")
    out.append("")
    out += [f"- {key}: {r.network} {r.method}{' ' + r.recipe if r.recipe else ''}, {r.label}"
            f"{'; auxiliary heads retrained (training.heads): ' + r.heads if r.heads else ''}" for key, r in zip(keys, cols)]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="folders holding NAME.cmd files and their metrics")
    p.add_argument("--cifar100", action="store_true", help="Table 2's CIFAR-100 column")
    p.add_argument("--heads", nargs="*", default=[], metavar="RUN=FILE",
                   help="run RUN with its auxiliary heads retrained (training.heads' heads.json): one more Table 6 column")
    args = p.parse_args()
    runs = [r for d in args.runs for f in sorted(Path(d).glob("*.cmd")) if (r := load_run(f)) is not None]
    if not runs:
        raise SystemExit(f"no runs (NAME.cmd with NAME.metrics.jsonl or NAME/metrics.jsonl) in {', '.join(args.runs)}")
    try:
        retrained = [with_heads(runs, spec) for spec in args.heads]
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    for title, rows in (("Table 1 layout: training method -> final-output test error", table1(runs)),
                        ("Table 2 layout: network -> final-output test error (the paper's method and recipe)",
                         table2(runs, args.cifar100)),
                        ("Table 6 layout: test error (%) per output", table6(runs + retrained))):
        print(f"### {title}\n")
        print("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
