"""An in-process server under bench.soak's traffic, traced by tracemalloc: do Python allocations grow after
warm-up? (RESULTS §26; run from the project root: python bench/results/soak_2026-12-01/tracemalloc_in_process.py 16)

Prints the traced Python memory at a quarter of the run and at its end, and the allocation sites that grew most
between the two. The process's RSS is printed too but is no guide: it holds the clients and tracemalloc's tables.
"""

import tracemalloc

tracemalloc.start(8)  # before the imports below, so that their allocations are traced too

import gc  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from bench.soak import Traffic  # noqa: E402
from server.loadgen import load_labelled_folder  # noqa: E402
from tests.server.conftest import running_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(minutes: float) -> None:
    images = load_labelled_folder(ROOT.parent / "shared" / "data" / "cifar10-jpeg" / "test")[0][:500]
    with running_server(ROOT / "models" / "repository") as (app, target):
        model = next(iter(app.engines))
        stop = threading.Event()
        clients = [Traffic(target, f"http://127.0.0.1:{app.http_port}", model, images, i) for i in range(6)]
        threads = [threading.Thread(target=c.run, args=(stop,), daemon=True) for c in clients]
        for t in threads:
            t.start()
        start, snapshots = time.time(), []
        for mark in (minutes * 0.25, minutes):
            while time.time() - start < mark * 60:
                time.sleep(5)
            gc.collect()
            snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            snapshots.append(snap)
            traced = sum(s.size for s in snap.statistics("filename")) / 2**20
            done = sum(sum(c.outcomes.values()) for c in clients)
            print(f"{mark:.1f} min: {done} requests, RSS {rss_mb():.1f} MB, traced {traced:.1f} MB", flush=True)
        stop.set()
        for t in threads:
            t.join(30)
        print("top growth by traceback:")
        for d in snapshots[1].compare_to(snapshots[0], "traceback")[:12]:
            print(f"  {d.size_diff / 1024:+.1f} KiB ({d.count_diff:+d} blocks), now {d.size / 1024:.1f} KiB")
            for frame in d.traceback.format()[-6:]:
                print("     ", frame.strip()[:150])
        print("unexpected:", sum(len(c.unexpected) for c in clients))


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 16)
