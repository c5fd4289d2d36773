"""Float against int8 exits on this CPU (`python -m export all --int8`): each segment's latency and the whole
chain's throughput, measured side by side in alternating rounds, and both models' test accuracy per exit.

    python -m bench.int8_cpu --float-model models/repository/auxnet56_5-cifar10 --int8-model REPO/NAME
                             [--data ../shared/data/cifar10-jpeg/test] [--rounds 5] [--threads 1]

Latency is the median of one run per round at batch 1 and 32 (intra-op threads as the server gives each
session: 1 by default). Accuracy is on the labelled folder's images, decoded and normalised as the server does.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from export.evaluate import cpu_chain, exit_scores, labelled_images
from export.policy import evaluate
from server.precision import cpu_int8_instructions
from server.repository import load_manifest

BATCHES = (1, 32)


def sessions(model_dir: str, threads: int):
    info = load_manifest(model_dir)
    return info, cpu_chain(info, threads)


def segment_inputs(chain, x: np.ndarray) -> list[np.ndarray]:
    """What each segment is fed when `x` enters the chain."""
    feeds = [x]
    for s in chain[:-1]:
        feeds.append(s.run(None, {"input": feeds[-1]})[0])
    return feeds


def time_runs(session, x: np.ndarray, seconds: float) -> float:
    """Median seconds of one run, over as many runs as fit in `seconds` (at least 5)."""
    times, end = [], time.perf_counter() + seconds
    while len(times) < 5 or time.perf_counter() < end:
        t = time.perf_counter()
        session.run(None, {"input": x})
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> int:
    root = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser("python -m bench.int8_cpu", description=__doc__)
    p.add_argument("--float-model", default=str(root / "models" / "repository" / "auxnet56_5-cifar10"))
    p.add_argument("--int8-model", required=True, help="a model exported with --int8 from the same checkpoint")
    p.add_argument("--data", default=str(root.parent / "shared" / "data" / "cifar10-jpeg" / "test"))
    p.add_argument("--per-class", type=int, default=None, help="test images per class (default: all)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=0.5, help="per segment, batch and round")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    (fi, fchain), (qi, qchain) = sessions(args.float_model, args.threads), sessions(args.int8_model, args.threads)
    if [e.layer for e in fi.exits] != [e.layer for e in qi.exits]:
        raise SystemExit(f"the two models' exits differ: {[e.layer for e in fi.exits]} vs {[e.layer for e in qi.exits]}")
    print(f"machine: {platform.processor() or platform.machine()}, int8 instructions {cpu_int8_instructions() or 'none'}, "
          f"intra-op threads {args.threads}, {time.strftime('%Y-%m-%d')}")
    x32 = np.random.default_rng(0).standard_normal((max(BATCHES), *fi.input_shape)).astype(np.float32)
    feeds = segment_inputs(fchain, x32)  # the same inputs for both precisions
    per = {(prec, k, b): [] for prec in ("float", "int8") for k in range(len(fchain)) for b in BATCHES}
    for _ in range(args.rounds):  # alternate, so both see the same machine
        for b in BATCHES:
            for k in range(len(fchain)):
                for prec, chain in (("float", fchain), ("int8", qchain)):
                    per[(prec, k, b)].append(time_runs(chain[k], feeds[k][:b], args.seconds))
    print("\nsegment latency, ms (median of rounds)")
    print("exit  layer  " + "  ".join(f"float b{b:<3} int8 b{b:<3} ratio" for b in BATCHES))
    totals = {(prec, b): 0.0 for prec in ("float", "int8") for b in BATCHES}
    for k, e in enumerate(fi.exits):
        cells = []
        for b in BATCHES:
            f, q = (1000 * statistics.median(per[(prec, k, b)]) for prec in ("float", "int8"))
            totals[("float", b)] += f
            totals[("int8", b)] += q
            cells.append(f"{f:10.3f} {q:10.3f} {f / q:5.2f}x")
        print(f"{k:4d}  {e.layer:5d}  " + "  ".join(cells))
    print("chain " + " " * 6 + "  ".join(f"{totals[('float', b)]:10.3f} {totals[('int8', b)]:10.3f} "
                                         f"{totals[('float', b)] / totals[('int8', b)]:5.2f}x" for b in BATCHES))
    print("chain img/s at batch 32: float {:.0f}, int8 {:.0f}".format(32 / (totals[("float", 32)] / 1000),
                                                                     32 / (totals[("int8", 32)] / 1000)))
    if list(qi.classes) != list(fi.classes):
        raise SystemExit(f"the two models' classes differ: {list(fi.classes)} vs {list(qi.classes)}")
    images, labels, files = labelled_images(args.data, fi.classes, args.per_class)
    fs, qs = exit_scores(fi, fchain, images, labels, files), exit_scores(qi, qchain, images, labels, files)
    fa, qa = fs.correct.mean(axis=1), qs.correct.mean(axis=1)
    print(f"\ntest top-1 per exit on {len(images)} images of {args.data}")
    print("exit  layer   float    int8   change")
    for k, e in enumerate(fi.exits):
        print(f"{k:4d}  {e.layer:5d}  {100 * fa[k]:6.2f}  {100 * qa[k]:6.2f}  {100 * (qa[k] - fa[k]):+6.2f} pp")
    print("\neach model's served policy (its manifest's thresholds) on the same images; compute per image from the "
          "batch-32 segment latencies above, relative to the float final exit")
    print("model  score   thresholds                    accuracy  final exit  exit rates                      compute")
    float_final = totals[("float", 32)]
    for prec, info, s in (("float", fi, fs), ("int8", qi, qs)):
        t = [e.threshold for e in info.exits]
        cum = list(np.cumsum([statistics.median(per[(prec, k, 32)]) for k in range(len(info.exits))]) * 1000)
        r = evaluate(s, t, cum)  # its "mean_mflops" is in the unit of the costs given: ms per batch of 32
        rates = " / ".join(f"{100 * x:.0f}%" for x in r["exit_rates"])
        print(f"{prec:5s}  {info.policy_score:6s}  {str([round(x, 3) for x in t[:-1]]):28s}  {100 * r['accuracy']:6.2f}%  "
              f"{100 * r['final_accuracy']:8.2f}%  {rates:30s}  {r['mean_mflops'] / float_final:.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
