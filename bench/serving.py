"""Serving benchmark: a closed-loop load generator against a real server process, per policy, beside
the reference limit (raw ONNX Runtime throughput of the whole model at the server's batch size).

    python -m bench.serving [--repo models/repository] [--data ../shared/data/cifar10-jpeg/test]
                            [--per-class 100] [--concurrency 16] [--requests 2000]

Client and server share this machine's cores; all figures come from one run, so compare ratios.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from server.client import Client
from server.demo import ROOT, start_server
from server.loadgen import closed_loop, closed_loop_procs, summarise
from server.repository import list_models, load_manifest


def load_test_images(root: str, per_class: int):
    from pathlib import Path

    data, names = [], []
    for d in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        for f in sorted(d.iterdir())[:per_class]:
            data.append(f.read_bytes())
            names.append(d.name)
    return data, names


def raw_onnxruntime(model_dir, batch: int, threads: int, seconds: float = 5.0, device: str = "cpu") -> float:
    """Images/s of the full chain of segments in one process, no server, no decoding."""
    import onnxruntime as ort

    info = load_manifest(model_dir)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    if device == "cuda":
        from server.backends import load_cuda_libraries

        load_cuda_libraries(ort)  # as the server's backends do
    sessions = [ort.InferenceSession(str(e.onnx), opts, providers=providers) for e in info.exits]
    if device == "cuda" and sessions[0].get_providers()[0] != "CUDAExecutionProvider":
        print("raw reference: onnxruntime fell back to the CPU; no CUDA reference (the server's rows stand)")
        return float("nan")  # the server's figures, measured before, are still printed
    x0 = np.random.default_rng(0).standard_normal((batch, *info.input_shape)).astype(np.float32)

    def chain():
        x = x0
        for s in sessions:
            out = s.run(None, {"input": x})
            x = out[0]

    return images_per_s(chain, batch, seconds)


def images_per_s(run_batch, batch: int, seconds: float) -> float:
    """Run `run_batch` (after one warm-up call) back to back for `seconds`; images per second."""
    run_batch()
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        run_batch()
        n += batch
    return n / (time.perf_counter() - t)


def raw_static(model_dir, batch: int, seconds: float = 5.0, device: str = "cpu") -> float:
    """Images/s of the same chain on static buffers (server/static_batches.py): features chained in the
    bound buffers, one CUDA graph per segment on the CUDA provider. The reference for --static-batches."""
    from server.static_batches import static_chain

    info = load_manifest(model_dir)
    chain = static_chain([e.onnx for e in info.exits], device, batch)
    x0 = np.random.default_rng(0).standard_normal((batch, *info.input_shape)).astype(np.float32)

    def run():
        x = x0
        for b in chain:
            x = b.run_bound(x)[0]

    return images_per_s(run, batch, seconds)


def exit_on_sigterm() -> None:
    """SIGTERM (e.g. from `timeout`) raises SystemExit, so `finally` stops the server this bench started
    instead of leaving it running behind the next measurement."""
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def start_profile(pid: int, out: str):
    """py-spy sampling process `pid` into `out` (raw stacks) until stop_profile; None, said why, if it cannot
    (no py-spy on PATH, no ptrace permission): a profile is extra, never a reason to lose the measurement."""
    import shutil
    import subprocess

    spy = os.environ.get("AUXNET_PY_SPY") or shutil.which("py-spy")
    if not spy:
        print("profile: no py-spy on PATH (or AUXNET_PY_SPY)")
        return None
    with open(out + ".log", "w") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([spy, "record", "-p", str(pid), "-r", "250", "-f", "raw", "-o", out, "--nonblocking"],
                                stdout=log, stderr=subprocess.STDOUT)
    time.sleep(1.0)  # attaching takes a moment; a refusal ends it at once
    if proc.poll() is not None:
        print(f"profile: py-spy exited with code {proc.returncode}: {open(out + '.log').read()[-300:]}")
        return None
    return proc


def stop_profile(spy) -> None:
    """Stop sampling; py-spy writes the profile on SIGINT."""
    import signal

    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)


def add_image_args(p: argparse.ArgumentParser, per_class: int) -> None:
    """The model repository and the labelled test images a serving bench sends (shared by the benches)."""
    p.add_argument("--repo", default=str(ROOT / "models" / "repository"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg" / "test"))
    p.add_argument("--per-class", type=int, default=per_class)


def main() -> None:
    exit_on_sigterm()
    p = argparse.ArgumentParser()
    add_image_args(p, per_class=100)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--budgets-ms", type=float, nargs="+", default=[10.0, 20.0])
    p.add_argument("--server-args", default="", help="extra server flags, e.g. '--device cuda --workers 2'")
    p.add_argument("--client-procs", type=int, default=1, help="client processes sharing --concurrency")
    p.add_argument("--raw-device", default="cpu", choices=["cpu", "cuda"],
                   help="execution provider of the raw ONNX Runtime reference")
    p.add_argument("--raw-threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--images-per-request", type=int, default=1,
                   help="N > 1: each call a ClassifyBatch of N images (the per-call cost shared by N)")
    p.add_argument("--raw-static", action="store_true",
                   help="also measure the raw chain on static buffers (CUDA graphs on the CUDA provider)")
    p.add_argument("--profile-server", metavar="FILE",
                   help="py-spy the server process (with --workers N: the supervisor) through the measured "
                        "policies into FILE (raw stacks)")
    args = p.parse_args()
    images, names = load_test_images(args.data, args.per_class)
    model_dir = list_models(args.repo)[0]
    proc, target, _ = start_server(args.repo, ["--max-batch", str(args.max_batch), *args.server_args.split()])
    rows = []
    try:
        with Client(target) as c:
            info = c.model_info()
        labels = [list(info.classes).index(n) for n in names]
        t = [round(e.default_threshold, 3) for e in info.exits[:-1]]
        policies = [("final exit only", {}), (f"calibrated policy ({info.policy_score}, t={t})", {"calibrated_policy": True})]
        policies += [(f"latency budget {b} ms", {"budget_ms": b}) for b in args.budgets_ms]
        closed_loop(target, images[:64], args.concurrency, 200)  # warm-up
        spy = start_profile(proc.pid, args.profile_server) if args.profile_server else None
        try:
            for name, kw in policies:
                results, wall = closed_loop_procs(target, images, args.concurrency, args.requests, args.client_procs,
                                                  images_per_request=args.images_per_request, **kw)
                rows.append((name, summarise(results, wall, labels, len(info.exits))))
        finally:
            stop_profile(spy)
    finally:
        proc.terminate()
        proc.wait(30)
    raw = {f"{th} intra-op thread(s)": raw_onnxruntime(model_dir, args.max_batch, threads=th, device=args.raw_device)
           for th in args.raw_threads}
    if args.raw_static:
        try:
            raw["static buffers" + (", CUDA graphs" if args.raw_device == "cuda" else "")] = raw_static(
                model_dir, args.max_batch, device=args.raw_device)
        except Exception as e:  # noqa: BLE001 - a reference that cannot run must not take the server's rows with it
            print(f"raw static reference failed: {type(e).__name__}: {e}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared by server and "
          f"{args.concurrency} client threads in {args.client_procs} process(es), {args.images_per_request} image(s) per call; "
          f"server args '{args.server_args}'; "
          f"{len(images)} CIFAR-10 test images, {args.requests} requests per policy; "
          f"server max batch {args.max_batch}")
    print("| policy | throughput (img/s) | x final-only | p50 ms | p99 ms | accuracy | budget met | exit histogram |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    base = rows[0][1]["throughput_rps"]
    for name, s in rows:
        hist = " / ".join(f"{100 * h:.0f}%" for h in s["exit_histogram"])
        err = f" (errors {s['errors']})" if s["errors"] else ""
        print(f"| {name}{err} | {s['throughput_rps']:.0f} | {s['throughput_rps'] / base:.2f} | {s['p50_ms']:.1f} | "
              f"{s['p99_ms']:.1f} | {100 * s['accuracy']:.1f}% | {100 * s['budget_met']:.0f}% | {hist} |")
    for how, ips in raw.items():
        print(f"| raw ONNX Runtime ({args.raw_device}), full model, batch {args.max_batch}, {how}, "
              f"no server | {ips:.0f} | "
              f"{ips / base:.2f} | - | - | - | - | final only |")


if __name__ == "__main__":
    main()
