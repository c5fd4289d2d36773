"""The per-exit table in the layout of the paper's Table 6."""

from __future__ import annotations


def exit_table(costs: list[dict], val: dict | None, test: dict | None) -> str:
    head = f"{'output':>6} {'layers':>6} {'params':>9} {'MFLOPs':>8} {'val top1 err':>12} {'test top1 err':>13} {'test top5 err':>13}"
    rows = [head, "-" * len(head)]
    for c in costs:
        k = c["exit"]
        t1 = f"{test['top1_err'][k]:.2f}" if test else "-"
        t5 = f"{test['top5_err'][k]:.2f}" if test else "-"
        v1 = f"{val['top1_err'][k]:.2f}" if val else "-"  # None: trained with --val-size 0
        rows.append(f"{k + 1:>6} {c['layer']:>6} {c['params'] / 1e6:>8.2f}M {c['mflops']:>8.1f} "
                    f"{v1:>12} {t1:>13} {t5:>13}")
    return "\n".join(rows)
