"""What a trace taken from the workers' shared trace_count costs (server/trace_count.py): a sampled request's
flock, 8-byte read and write, against the in-process count a single server keeps.

    python -m bench.trace_count_cost [--calls 20000] [--processes 2]

Only requests that the rate already sampled pay it, and none once the count is used up.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time

from server.trace_count import SharedTraceCount
from server.tracing import Tracer, TraceSettings


def per_call_us(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def _takes(folder: str, calls: int, start, out) -> None:
    counts = SharedTraceCount(folder)
    start.wait()
    out.put(per_call_us(lambda: counts.take(""), calls))
    counts.close()


def contended_us(folder: str, calls: int, processes: int) -> float:
    """The mean time a take costs while `processes` processes take from the same count at once (worst case: every
    request of every worker a sampled one)."""
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_takes, args=(folder, calls, start, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # every process imported and waiting
    start.set()
    per = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    return sum(per) / len(per)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--processes", type=int, default=2, help="processes taking at once, for the contended figure")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        counts = SharedTraceCount(folder)
        counts.set("", 10 * args.calls)
        take_us = per_call_us(lambda: counts.take(""), args.calls)
        settings = TraceSettings(f"{folder}/t.json", level="TIMESTAMPS", rate=1, count=10 * args.calls)
        rows = {}
        for name, shared in (("in-process count (one server)", None), ("shared count (--workers)", SharedTraceCount(folder))):
            tracer = Tracer(settings, own_file=shared is not None, shared_count=shared)
            rows[name] = per_call_us(lambda t=tracer: t.sample("m", "v", 0.0, None, 1), args.calls)
            tracer.close()
        counts.set("", 10 * args.calls * args.processes)
        contended = contended_us(folder, args.calls, args.processes)
        counts.close()
    print(f"{args.calls} calls each; trace_rate 1, so every call is a sampled request\n")
    print("| what | us a call |\n|---|---:|")
    print(f"| SharedTraceCount.take alone | {take_us:.2f} |")
    for name, us in rows.items():
        print(f"| Tracer.sample, {name} | {us:.2f} |")
    print(f"| SharedTraceCount.take, {args.processes} processes taking at once (mean per process) | {contended:.2f} |")


if __name__ == "__main__":
    main()
