"""Plot metrics.jsonl curves per exit: validation top-1 error against epoch, one panel per run.

    python -m bench.plot_runs OUT.png NAME=metrics.jsonl [NAME=metrics.jsonl ...]
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, runs = argv[0], [a.split("=", 1) for a in argv[1:]]
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.6), dpi=110, sharey=True)
    axes = axes if len(runs) > 1 else [axes]
    for ax, (name, path) in zip(axes, runs):
        rows = [json.loads(line) for line in open(path)]
        epochs = [r["epoch"] for r in rows]
        if not rows or rows[0].get("val_top1_err") is None:
            raise SystemExit(f"{path}: no validation errors (a run with --val-size 0, or --no-eval): nothing to plot")
        for k in range(len(rows[0]["val_top1_err"])):
            ax.plot(epochs, [r["val_top1_err"][k] for r in rows], label=f"output {k + 1}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 70)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation top-1 error (%)")
    max(axes, key=lambda a: len(a.get_lines())).legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    main(sys.argv[1:])
