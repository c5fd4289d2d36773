"""Plot metrics.jsonl curves per exit: validation top-1 error against epoch, one panel per run.

    python -m bench.plot_runs OUT.png NAME=metrics.jsonl [NAME=metrics.jsonl ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def run_curves(spec: str) -> tuple[str, list[dict]]:
    """NAME=FILE -> (NAME, the rows of FILE); an argparse error naming what is wrong with the argument."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"'{spec}': give a run as NAME=metrics.jsonl")
    try:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as e:
        raise argparse.ArgumentTypeError(f"{path}: {e.strerror or e}") from None
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{path}: not JSON lines ({e})") from None
    if not rows or not isinstance(rows[0], dict) or rows[0].get("val_top1_err") is None:
        raise argparse.ArgumentTypeError(f"{path}: no validation errors (empty, a run with --val-size 0, or --no-eval): "
                                         "nothing to plot")
    return name, rows


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.plot_runs", description=__doc__.split("\n")[0])
    p.add_argument("out", help="the figure to write (.png, .svg, .pdf)")
    p.add_argument("runs", nargs="+", type=run_curves, metavar="NAME=metrics.jsonl",
                   help="a run's name and its training.run metrics.jsonl (one panel each)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = args.runs
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.6), dpi=110, sharey=True)
    axes = axes if len(runs) > 1 else [axes]
    for ax, (name, rows) in zip(axes, runs):
        epochs = [r["epoch"] for r in rows]
        for k in range(len(rows[0]["val_top1_err"])):
            ax.plot(epochs, [r["val_top1_err"][k] for r in rows], label=f"output {k + 1}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 70)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation top-1 error (%)")
    max(axes, key=lambda a: len(a.get_lines())).legend(fontsize=7)
    fig.tight_layout()
    try:
        fig.savefig(args.out)
    except (OSError, ValueError) as e:  # a missing folder, or a suffix matplotlib has no writer for
        raise SystemExit(f"{args.out}: cannot write the figure: {e}") from None


if __name__ == "__main__":
    main()
