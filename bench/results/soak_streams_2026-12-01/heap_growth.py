"""Python-heap growth of one soak path, by tracemalloc (a diagnostic kept with the soak it explains; run from the
project root): an in-process server on the default model, one client thread of bench.soak's Traffic with the given
mix for 20 s (warm-up), then twice 60 s, a snapshot after each; prints the heap growth of each minute and its top
sources.

    python bench/results/soak_streams_2026-12-01/heap_growth.py progressive=1   (or stream=1, corrupt_grpc=1)
"""

import gc
import sys
import threading
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from bench.soak import Traffic, parse_mix  # noqa: E402
from server.loadgen import load_labelled_folder  # noqa: E402
from tests.server.conftest import running_server  # noqa: E402


def main() -> None:
    mix = parse_mix(sys.argv[1])
    images = load_labelled_folder(str(ROOT.parent / "shared" / "data" / "cifar10-jpeg" / "test"))[0][:200]
    tracemalloc.start(12)
    with running_server(ROOT / "models" / "repository", http_port=None) as (app, target):
        model = next(iter(app.engines))

        def burst(seconds: float) -> tuple[int, list[str]]:
            stop = threading.Event()
            traffic = Traffic(target, "http://127.0.0.1:1", model, images, 1, mix)
            thread = threading.Thread(target=traffic.run, args=(stop,))
            thread.start()
            time.sleep(seconds)
            stop.set()
            thread.join(30)
            gc.collect()
            return sum(traffic.outcomes.values()), traffic.unexpected[:3]

        print("warm-up", burst(20))
        snapshots = [tracemalloc.take_snapshot()]
        for _ in range(2):
            print("minute: requests, unexpected", burst(60))
            snapshots.append(tracemalloc.take_snapshot())
    for i in (1, 2):
        stats = snapshots[i].compare_to(snapshots[i - 1], "traceback")
        print(f"minute {i}: heap growth {sum(s.size_diff for s in stats) / 1024:+.1f} KB")
        for s in stats[:3]:
            print(f"  {s.size_diff / 1024:+.1f} KB {s.count_diff:+d} blocks at {s.traceback.format()[-1].strip()}")


if __name__ == "__main__":
    main()
