"""How many replicas for a request rate and a p99 latency budget, with and without early exit.

    python -m bench.scale_sim [--repo models/repository] [--threads 2] [--efficiency 0.385]

Inputs, all measured: per-image segment cost at batch 32 (ONNX Runtime CPU, from the manifest, measured at
export), the default policy's exit rates (validation split), and the server's efficiency: measured server
throughput over what the segment costs alone predict (bench/RESULTS.md section 4, its 21:43 run: 322 img/s at the final
exit with 2 threads where the costs predict 836; the clients shared those cores, so this is pessimistic).

Model: a replica serves mu = threads * efficiency / C images/s, C the mean per-image cost (a request that
stops at exit k pays segments 0..k). Queueing as M/M/1, whose sojourn time is exponential with rate mu - lambda:
p99 = ln(100) / (mu - lambda) <= budget gives lambda_max = mu - ln(100) / budget per replica.
Replicas = ceil(rate / lambda_max). A model, not a measurement: batching makes service faster under load
(good for us), bursty arrivals make tails worse (bad); the table is for sizing, not for promises.
"""

from __future__ import annotations

import argparse
import math

from server.demo import ROOT
from server.repository import list_models, load_manifest


def per_image_costs_ms(info) -> list[float]:
    return [e.raw["latency_ms"]["onnxruntime_cpu"]["batch_32"] / 32 for e in info.exits]


def mean_cost_ms(costs: list[float], rates: list[float]) -> float:
    cumulative = [sum(costs[: k + 1]) for k in range(len(costs))]
    return sum(r * c for r, c in zip(rates, cumulative))


def replicas(rate: float, budget_s: float, mu: float) -> int | None:
    lam = mu - math.log(100) / budget_s
    return None if lam <= 0 else math.ceil(rate / lam)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repo", default=str(ROOT / "models" / "repository"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--efficiency", type=float, default=0.385)
    args = p.parse_args()
    info = load_manifest(list_models(args.repo)[0])
    costs = per_image_costs_ms(info)
    policy = info.manifest["policy"]
    n = len(costs)
    plans = {"final exit only": [0.0] * (n - 1) + [1.0], f"early exit (t={policy['thresholds'][:-1]})": policy["exit_rates"]}
    print(f"per-image segment cost at batch 32 (ms): {[round(c, 3) for c in costs]}; exit rates {policy['exit_rates']}; "
          f"{args.threads} threads per replica, efficiency {args.efficiency}")
    mus = {}
    for name, rates in plans.items():
        c = mean_cost_ms(costs, rates)
        mus[name] = args.threads * args.efficiency / (c / 1000)
        print(f"{name}: mean cost {c:.3f} ms/image -> {mus[name]:.0f} img/s per replica")
    print("| target rate (req/s) | p99 budget (ms) | replicas, final exit only | replicas, early exit | saving |")
    print("|---:|---:|---:|---:|---:|")
    for rate in (1_000, 10_000, 100_000):
        for budget_ms in (25, 50, 100):
            a, b = (replicas(rate, budget_ms / 1000, mus[name]) for name in plans)
            saving = f"{100 * (1 - b / a):.0f}%" if a and b else "-"
            print(f"| {rate:,} | {budget_ms} | {a or 'impossible'} | {b or 'impossible'} | {saving} |")


if __name__ == "__main__":
    main()
