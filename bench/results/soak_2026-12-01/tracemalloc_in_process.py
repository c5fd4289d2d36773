"""In-process server + bench.soak traffic with tracemalloc: which Python allocations grow after warm-up?"""
import sys, time, threading, tracemalloc, gc, linecache
sys.path.insert(0, "/work/main")
tracemalloc.start(8)
from bench.soak import Traffic
from server.loadgen import load_labelled_folder
from tests.server.conftest import running_server
images = load_labelled_folder("/work/shared/data/cifar10-jpeg/test")[0][:500]
MIN = float(sys.argv[1])
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"): return int(line.split()[1]) / 1024
with running_server("/work/main/models/repository") as (app, target):
    model = next(iter(app.engines))
    stop = threading.Event()
    clients = [Traffic(target, f"http://127.0.0.1:{app.http_port}", model, images, i) for i in range(6)]
    threads = [threading.Thread(target=c.run, args=(stop,), daemon=True) for c in clients]
    for t in threads: t.start()
    start = time.time()
    snaps = {}
    marks = [MIN * 0.25, MIN]
    for m in marks:
        while time.time() - start < m * 60: time.sleep(5)
        gc.collect()
        snaps[m] = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        n = sum(sum(c.outcomes.values()) for c in clients)
        print(f"{m:.1f} min: {n} requests, RSS {rss():.1f} MB, traced {sum(s.size for s in snaps[m].statistics('filename'))/2**20:.1f} MB", flush=True)
    stop.set()
    for t in threads: t.join(30)
    diff = snaps[marks[1]].compare_to(snaps[marks[0]], "traceback")
    print("top growth by traceback:")
    for d in diff[:12]:
        print(f"  {d.size_diff/1024:+.1f} KiB ({d.count_diff:+d} blocks), now {d.size/1024:.1f} KiB")
        for fr in d.traceback.format()[-6:]:
            print("     ", fr.strip()[:150])
    print("unexpected:", sum(len(c.unexpected) for c in clients))
