"""Accuracy against mean MFLOPs per image as the confidence threshold varies, beside the fixed exits."""

from __future__ import annotations

from pathlib import Path


def plot_tradeoff(policy: dict, exits: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    curve = sorted(policy["curve"], key=lambda r: r["mean_mflops"])
    ax.plot([r["mean_mflops"] for r in curve], [100 * r["accuracy"] for r in curve], "-", color="C0",
            label="one threshold shared by all exits, varied")
    if policy.get("per_exit_curve"):
        pe = sorted(policy["per_exit_curve"], key=lambda r: r["mean_mflops"])
        ax.plot([r["mean_mflops"] for r in pe], [100 * r["accuracy"] for r in pe], "o-", ms=3, color="C2",
                label=f"per-exit thresholds ({policy.get('score', 'top1')}), optimised per allowed drop")
    ax.scatter([e["mflops"] for e in exits], [100 * e["val_top1"] for e in exits], color="C1", zorder=3,
               label="fixed exit")
    for e in exits:
        ax.annotate(f"L{e['layer']}", (e["mflops"], 100 * e["val_top1"]), textcoords="offset points", xytext=(4, -10))
    if policy.get("shared"):
        sh = policy["shared"]
        ax.scatter([sh["mean_mflops"]], [100 * sh["val_accuracy"]], marker="s", s=50, color="C4", zorder=4,
                   label=f"shared threshold t={sh['thresholds'][0]} (same promise)")
    ax.scatter([policy["mean_mflops"]], [100 * policy["val_accuracy"]], marker="*", s=150, color="C3", zorder=4,
               label=f"default policy ({policy.get('score', 'top1')}) {policy['thresholds'][:-1]}")
    ax.set_xlabel("mean MFLOPs per image (multiply-adds)")
    ax.set_ylabel("validation top-1 accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
