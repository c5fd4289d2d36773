"""What a model load really adds to the server's resident memory, beside what server/load_memory.py estimates.

    python -m bench.load_memory_estimate --model DIR [--model DIR ...] [--max-batch 8 32] [--loads 6]
           [--static-batches] [--no-cpu-mem-arena]

For each model folder and batch cap: starts `python -m server --max-batch B` (explicit model control, nothing
loaded), loads the folder's files `--loads` times under new names (Triton's load override: what an upload does),
each followed by one request of B raw images at the model's size to the new copy, and reads the server's resident
memory (VmRSS) after each. The first load also pays for libraries initialised lazily, so the figure per load is
the mean of the increments after it, and their largest beside it (one increment may also carry a one-off growth
of the process, e.g. a new malloc arena: the floor left after a load is there for that). Beside them: the estimate the server checks a load
against, what its parts are (weights, activations per image from the manifest), and the rule from file sizes
that models without the figures get.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as tgrpc

from bench.load_memory import rss_mb, serving_at
from server import load_memory
from server.demo import ROOT


def start(max_batch: int, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port_file = Path(tempfile.mkdtemp()) / "ports"
    empty_repo = Path(tempfile.mkdtemp())
    proc = subprocess.Popen([sys.executable, "-m", "server", "--repo", str(empty_repo), "--model-control-mode", "explicit",
                             "--port", "0", "--metrics-port", "0", "--http-port", "0", "--port-file", str(port_file),
                             "--log-level", "ERROR", "--max-batch", str(max_batch), "--max-message-mb", "512", *extra], cwd=ROOT)
    return proc, serving_at(proc, port_file)


def measure(folder: Path, max_batch: int, loads: int, extra: list[str]) -> dict:
    files = {f"file:{f.name}": f.read_bytes() for f in sorted(folder.glob("exit_*.onnx"))}
    config = (folder / "manifest.json").read_text()
    c_, h, w = json.loads(config)["input"]["shape"]
    pixels = (np.arange(max_batch * h * w * c_).reshape(max_batch, h, w, c_) * 37 % 256).astype(np.uint8)
    proc, target = start(max_batch, extra)
    try:
        client = tgrpc.InferenceServerClient(target, channel_args=[("grpc.max_send_message_length", 2**30)])
        time.sleep(1)
        rss = [rss_mb(proc.pid)]
        for i in range(loads):
            client.load_model(f"m{i}", config=config, files=files)
            x = tgrpc.InferInput("pixels", list(pixels.shape), "UINT8")
            x.set_data_from_numpy(pixels)
            client.infer(f"m{i}", [x])
            time.sleep(0.5)
            rss.append(rss_mb(proc.pid))
    finally:
        proc.terminate()
        proc.wait(30)
    steps = np.diff(rss)
    later = steps[1:] if len(steps) > 1 else steps
    return {"first_mb": float(steps[0]), "mean_mb": float(np.mean(later)), "max_mb": float(max(later))}


def main() -> int:
    p = argparse.ArgumentParser("python -m bench.load_memory_estimate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="a model folder (repeat for several)")
    p.add_argument("--max-batch", type=int, nargs="+", default=[32])
    p.add_argument("--loads", type=int, default=6)
    p.add_argument("--static-batches", action="store_true")
    p.add_argument("--no-cpu-mem-arena", action="store_true", help="serve with --cpu-mem-arena false")
    args = p.parse_args()
    extra = ["--static-batches"] if args.static_batches else []
    extra += ["--cpu-mem-arena", "false"] if args.no_cpu_mem_arena else []
    print(f"{'model':<34} {'cap':>4} {'files MB':>8} {'weights':>8} {'act/img KB':>10} {'first':>6} {'mean':>7} "
          f"{'max':>6} {'estimate':>8} {'est/mean':>8} {'files rule':>10} {'rule/mean':>9}")
    for folder in map(Path, args.model):
        parts = load_memory.manifest_memory(folder)
        file_mb = sum(f.stat().st_size for f in folder.glob("exit_*.onnx")) / 2**20
        for cap in args.max_batch:
            got = measure(folder.resolve(), cap, args.loads, extra)
            est = load_memory.needed(folder, cap, args.static_batches, not args.no_cpu_mem_arena) / 2**20
            rule = (load_memory.LOAD_BYTES_PER_MODEL_BYTE * file_mb * 2**20 + load_memory.LOAD_FIXED_BYTES) / 2**20
            weights = f"{sum(w for w, _ in parts) / 2**20:8.1f}" if parts else f"{'-':>8}"
            act = f"{sum(a for _, a in parts) / 1024:10.0f}" if parts else f"{'-':>10}"
            print(f"{folder.name:<34} {cap:>4} {file_mb:8.1f} {weights} {act} {got['first_mb']:6.1f} "
                  f"{got['mean_mb']:7.1f} {got['max_mb']:6.1f} {est:8.1f} {est / got['mean_mb']:8.2f} {rule:10.1f} "
                  f"{rule / got['mean_mb']:9.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
