"""ONNX Runtime's CPU arena on and off (RESULTS §63), and memory patterns off with the arena kept (`nopattern`,
RESULTS §68), for one model's chain of sessions outside the server: the resident memory four sets of sessions add
after the first (each run at batch 1, 2, 4, ... up to the cap, as the server's calibration does), and the chain's
median time at batch 1 and at the cap. (§68's runs were made with a copy of this script that had the third mode
added, then merged back here: the modes arena and noarena are unchanged.)

    PYTHONPATH=. python bench/results/load_memory_2026-12-02/arena_sessions.py MODEL_DIR CAP {arena,noarena,nopattern}
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def sessions(files, mode: str):
    out = []
    for f in files:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_cpu_mem_arena = mode != "noarena"
        opts.enable_mem_pattern = mode != "nopattern"
        out.append(ort.InferenceSession(str(f), opts, providers=["CPUExecutionProvider"]))
    return out


def chain_s(chain, shape, batch: int) -> float:
    x, spent = np.zeros((batch, *shape), np.float32), 0.0
    for s in chain:
        t = time.perf_counter()
        out = s.run(None, {"input": x})
        spent += time.perf_counter() - t
        x = out[0] if len(out) > 1 else x
    return spent


folder, cap, mode = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
shape = json.loads((folder / "manifest.json").read_text())["input"]["shape"]
files = sorted(folder.glob("exit_*.onnx"))
held = []
for i in range(4):
    chain = sessions(files, mode)
    for b in sorted({*[2**k for k in range(12) if 2**k < cap], cap}):
        for _ in range(3):
            chain_s(chain, shape, b)
    held.append(chain)
    if i == 0:
        first = rss_mb()
per_load = (rss_mb() - first) / 3
at_cap = sorted(chain_s(held[0], shape, cap) for _ in range(15))[7]
at_one = sorted(chain_s(held[0], shape, 1) for _ in range(41))[20]
print(f"{folder.name} cap {cap} {sys.argv[3]}: per load {per_load:.1f} MB; chain median batch {cap} {1000 * at_cap:.2f} ms, "
      f"batch 1 {1000 * at_one:.3f} ms")
