"""Scratch (RESULTS §71): what KServe V1's :explain costs beside :predict at the final exit and under the calibrated
policy, one client, one image a request, the default model; alternating rounds, medians.

    python bench/results/explain_2026-12-03/explain_cost.py [--requests 200] [--rounds 3]
"""
import argparse
import base64
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
p = argparse.ArgumentParser()
p.add_argument("--requests", type=int, default=200)
p.add_argument("--rounds", type=int, default=3)
args = p.parse_args()
pf = Path(tempfile.mkdtemp()) / "ports"
proc = subprocess.Popen([sys.executable, "-m", "server", "--repo", "models/repository", "--port", "0", "--metrics-port", "-1",
                         "--http-port", "0", "--port-file", str(pf), "--log-level", "WARNING"], cwd=ROOT)
while not (pf.exists() and pf.read_text().strip()):
    time.sleep(0.1)
port = int(pf.read_text().split()[3])
files = sorted((ROOT / "samples/cifar10-test").glob("*/*.jpg"))[:50]
bodies = [base64.b64encode(f.read_bytes()).decode() for f in files]
url = f"http://127.0.0.1:{port}/v1/models/auxnet56_5-cifar10:"
variants = {"predict, final exit": ("predict", {}), "predict, calibrated policy": ("predict", {"calibrated_policy": True}),
            "explain (calibrated policy's rule)": ("explain", {"calibrated_policy": True})}
times = {k: [] for k in variants}
try:
    for _ in range(args.rounds):
        for name, (verb, params) in variants.items():
            t = []
            for i in range(args.requests):
                body = json.dumps({"instances": [{"b64": bodies[i % len(bodies)]}], "parameters": params}).encode()
                t0 = time.perf_counter()
                with urllib.request.urlopen(urllib.request.Request(url + verb, body, method="POST")) as r:
                    r.read()
                t.append(time.perf_counter() - t0)
            times[name].append(statistics.median(t) * 1000)
finally:
    proc.terminate()
    proc.wait()
base = statistics.median(times["predict, final exit"])
print(f"{args.requests} requests a variant a round, {args.rounds} rounds, one client; median latency per round (ms)")
print("| variant | median ms (per round) | x predict at the final exit |\n|---|---:|---:|")
for name, t in times.items():
    print(f"| {name} | {statistics.median(t):.2f} ({' '.join(f'{v:.2f}' for v in t)}) | {statistics.median(t) / base:.2f} |")
