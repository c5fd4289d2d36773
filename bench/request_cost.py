"""What the server costs per image apart from the network's compute (issue 14): the real server with every
segment's ONNX Runtime run replaced by returning zeros of the right shapes, under a closed loop. Its CPU per
image is the ceiling of one server process on an accelerator that computes in no time (what a GPU comes
close to for this small network), and what per-request work has to shrink for a GPU to be kept busy.

    python -m bench.request_cost [--rounds 3] [--requests 3000] [--concurrency 16] [--server-args '--workers 2']
                                 [--client-procs 1] [--images-per-request 1] [--compare-server-args ARGS ...] [--compute-us 0]

Variants, alternated in every round: JPEGs decoded directly by libjpeg-turbo (the default) and through
Pillow only (what the server did before); or, with --compare-server-args, the server as given against the
server with each set of flags added (e.g. '--inline-compute-ms 0'), all decoding directly. The compute is
replaced in the server processes (every worker of --workers N) by a sitecustomize module this script
writes; nothing in the server knows about it. --compute-us N makes each run first sleep N us (GIL released,
no CPU): what waiting for an accelerator looks like to the server.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from bench.serving import add_image_args, exit_on_sigterm, load_test_images
from server.demo import start_server
from server.loadgen import closed_loop, closed_loop_procs

HOOK = '''
import os
if os.environ.get("AUXNET_BENCH_NULL_COMPUTE"):
    import numpy as np
    import server.backends as backends
    _init = backends.OnnxRuntimeBackend.__init__
    def _null_init(self, *a, **k):
        _init(self, *a, **k)
        self._null_shapes = [tuple(o.shape[1:]) for o in self.session.get_outputs()]
    backends.OnnxRuntimeBackend.__init__ = _null_init
    import time
    _wait_s = float(os.environ.get("AUXNET_BENCH_COMPUTE_US", "0")) / 1e6
    def _null_run(self, x):
        if _wait_s:
            time.sleep(_wait_s)  # the GIL released, no CPU used: waiting for an accelerator, as the server sees it
        return [np.zeros((len(x), *s), np.float32) for s in self._null_shapes]
    backends.OnnxRuntimeBackend.run = _null_run
if os.environ.get("AUXNET_BENCH_PILLOW_ONLY"):
    import server.decode
    server.decode.simplejpeg = None
'''
DECODE_VARIANTS = {"JPEG decoded directly (libjpeg-turbo)": {},
                   "JPEG through Pillow only": {"env": {"AUXNET_BENCH_PILLOW_ONLY": "1"}}}


def tree_cpu_s(pid: int) -> float:
    """utime + stime of a process and its children (the --workers processes)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def measure(hook_dir: str, variant: dict, images: list[bytes], args) -> dict:
    env = {"PYTHONPATH": hook_dir, "AUXNET_BENCH_NULL_COMPUTE": "1", "AUXNET_BENCH_COMPUTE_US": str(args.compute_us),
           **variant.get("env", {})}
    extra = [*args.server_args.split(), *variant.get("server_args", [])]
    proc, target, _ = start_server(args.repo, ["--monitor-fraction", "0", "--http-port", "-1", *extra], quiet=True, env=env)
    try:
        closed_loop(target, images[:64], args.concurrency, 300)  # warm-up
        cpu0, t0 = tree_cpu_s(proc.pid), time.perf_counter()
        results, _ = closed_loop_procs(target, images, args.concurrency, args.requests, args.client_procs,
                                       images_per_request=args.images_per_request)
        wall, cpu = time.perf_counter() - t0, tree_cpu_s(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(30)
    errors = sum(not r.ok for r in results)
    return {"ips": args.requests / wall, "cpu_ms": 1000 * cpu / args.requests, "errors": errors}


def main() -> None:
    exit_on_sigterm()
    p = argparse.ArgumentParser()
    add_image_args(p, per_class=50)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--server-args", default="", help="extra server flags, e.g. '--workers 2'")
    p.add_argument("--client-procs", type=int, default=1, help="client processes sharing --concurrency")
    p.add_argument("--images-per-request", type=int, default=1, help="N > 1: ClassifyBatch calls of N images")
    p.add_argument("--compute-us", type=float, default=0.0,
                   help="each segment run sleeps this long instead (no CPU, GIL released: an accelerator's wait)")
    p.add_argument("--compare-server-args", nargs="+",
                   help="compare the server with each of these sets of flags added, not the two decoders")
    args = p.parse_args()
    variants = DECODE_VARIANTS if args.compare_server_args is None else {
        f"server args '{args.server_args}'": {},
        **{f"with '{extra}'": {"server_args": extra.split()} for extra in args.compare_server_args}}
    images, _ = load_test_images(args.data, args.per_class)
    hook_dir = tempfile.mkdtemp()
    Path(hook_dir, "sitecustomize.py").write_text(HOOK)
    runs = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, variant in variants.items():
            runs[name].append(measure(hook_dir, variant, images, args))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared by the server and "
          f"{args.concurrency} client threads in {args.client_procs} process(es), {args.images_per_request} image(s) per "
          f"request; server args '{args.server_args}'; "
          f"segments' compute replaced by zeros after a {args.compute_us:g} us sleep; "
          f"{len(images)} CIFAR-10 test JPEGs, {args.requests} images a round, {args.rounds} alternating rounds (medians)")
    print("| variant | img/s (per round) | server CPU ms/img (per round) | errors |")
    print("|---|---:|---:|---:|")
    for name, rs in runs.items():
        ips = " ".join(f"{r['ips']:.0f}" for r in rs)
        cpu = " ".join(f"{r['cpu_ms']:.3f}" for r in rs)
        print(f"| {name} | {statistics.median(r['ips'] for r in rs):.0f} ({ips}) | "
              f"{statistics.median(r['cpu_ms'] for r in rs):.3f} ({cpu}) | {sum(r['errors'] for r in rs)} |")


if __name__ == "__main__":
    main()
