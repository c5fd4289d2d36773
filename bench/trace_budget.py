"""Where a budgeted request's time goes under load, from the server's own request traces (server/tracing.py).

    python -m bench.trace_budget [--budget-ms 10] [--concurrency 16] [--requests 3000] [--trace-rate 1]
                                 [--server-args ARGS] [--keep DIR]

Starts the real server with tracing off, warms it up, turns tracing on through Triton's trace API (TraceSetting;
Triton's trace format, --trace-rate, a file per 500 traces), sends a closed loop of CIFAR-10 test JPEGs, each with
the latency budget and the calibrated policy, stops the server (which writes the last traces) and prints
server.trace_summary's table: per phase (decode, the wait for exit 0, compute, the whole request) and per exit
(its queue wait, its segment run, rows per run), plus the client's view.
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import shlex
import tempfile
from pathlib import Path

import grpc
import numpy as np

from bench.serving import add_image_args, exit_on_sigterm, load_test_images
from protos.oip import triton_compat_pb2 as triton
from protos.oip import triton_compat_pb2_grpc as triton_grpc
from server.demo import start_server
from server.loadgen import closed_loop
from server.trace_summary import load, render, summarise


def main() -> None:
    exit_on_sigterm()
    p = argparse.ArgumentParser()
    add_image_args(p, per_class=100)
    p.add_argument("--budget-ms", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--trace-rate", type=int, default=1)
    p.add_argument("--server-args", default="", help="extra server flags")
    p.add_argument("--keep", help="write the trace files here (default: a temporary folder)")
    args = p.parse_args()
    images, _ = load_test_images(args.data, args.per_class)
    folder = Path(args.keep or tempfile.mkdtemp(prefix="auxnet-traces-"))
    folder.mkdir(parents=True, exist_ok=True)
    trace = folder / "trace.json"
    proc, target, _ = start_server(args.repo, ["--trace-file", str(trace), "--trace-level", "OFF", "--trace-rate",
                                               str(args.trace_rate), "--trace-log-frequency", "500",
                                               *shlex.split(args.server_args)], quiet=True)
    try:
        closed_loop(target, images[:200], args.concurrency, 300)  # warm-up, not traced
        with grpc.insecure_channel(target) as channel:  # then tracing on, through Triton's trace API
            on = triton.TraceSettingRequest(settings={"trace_level": triton.TraceSettingRequest.SettingValue(value=["TIMESTAMPS"])})
            triton_grpc.TritonModelConfigStub(channel).TraceSetting(on, timeout=10)
        results, wall = closed_loop(target, images, args.concurrency, args.requests, budget_ms=args.budget_ms,
                                    calibrated_policy=True)
    finally:
        proc.terminate()  # a graceful stop: the server writes the traces it still holds
        proc.wait(60)
    files = sorted((f for f in glob.glob(f"{trace}.*") if f.rsplit(".", 1)[1].isdigit()), key=lambda f: int(f.rsplit(".", 1)[1]))
    traces = load(files)
    ok = [r for r in results if r.ok]
    client = np.array([r.client_ms for r in ok])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared by the server and "
          f"{args.concurrency} client threads; {args.requests} requests with budget {args.budget_ms:g} ms and the "
          f"calibrated policy; traced one in {args.trace_rate}; {len(files)} trace files in {folder}")
    print(f"client: {len(ok) / wall:.0f} req/s, p50 {np.percentile(client, 50):.2f} ms, p99 "
          f"{np.percentile(client, 99):.2f} ms, budget met {sum(r.budget_met for r in ok)} of {len(ok)}, "
          f"errors {len(results) - len(ok)}")
    print(render(summarise(traces)))


if __name__ == "__main__":
    main()
