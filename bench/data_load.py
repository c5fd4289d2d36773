"""How long a training process spends loading an image folder before its first step: decoding every JPEG,
against loading the arrays `--decode-cache` kept (training/data/folder.py). Each variant runs in a fresh
process, as each run of a GPU lease does, alternated over rounds.

    python -m bench.data_load --data-dir ../shared/data/cifar10-jpeg --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile

ONE_LOAD = """
import json, sys, time
t0 = time.perf_counter()
from training.data import load_splits
splits = load_splits("folder", sys.argv[1], decode_cache=sys.argv[2] or None)
print(json.dumps({"s": time.perf_counter() - t0, "train": len(splits.train), "val": len(splits.val),
                  "test": len(splits.test)}))
"""


def load_once(data_dir: str, cache: str) -> dict:
    out = subprocess.run([sys.executable, "-c", ONE_LOAD, data_dir, cache], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        first = load_once(args.data_dir, cache)  # decodes and writes the cache
        times = {"decode every image (no cache)": [], "load the cached arrays": []}
        for _ in range(args.rounds):
            times["decode every image (no cache)"].append(load_once(args.data_dir, "")["s"])
            times["load the cached arrays"].append(load_once(args.data_dir, cache)["s"])
    print(f"{first['train']} training, {first['val']} validation, {first['test']} test images from {args.data_dir}; "
          f"the first load with an empty cache (decode + write): {first['s']:.1f} s")
    print("| variant | seconds to load_splits, median (per round) |\n|---|---:|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.2f} ({', '.join(f'{t:.2f}' for t in ts)}) |")


if __name__ == "__main__":
    main()
