"""Issue 14, correctness first: every exit's answer on the GPU provider against the CPU provider, the
provider that really ran, and features kept on the device along the chain (IOBinding) against plain runs.

    python -m bench.gpu.serving_check [--device cuda] [--repo models/repository] [--out result.json]

Exits 1 if a provider fell back, or any exit differs beyond the tolerance. On a CPU (`--device cpu`) it
compares the CPU provider with itself: the rehearsal.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from server.backends import OnnxRuntimeBackend
from server.decode import ImageLimits, decode_encoded, to_model_input
from server.loadgen import load_labelled_folder
from server.repository import list_models, load_manifest

ROOT = Path(__file__).resolve().parents[2]
ATOL = 2e-3  # fp32 on cuDNN against the CPU: different convolution algorithms, same maths


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--repo", default=str(ROOT / "models" / "repository"))
    p.add_argument("--images", default=str(ROOT / "samples" / "cifar10-test"))
    p.add_argument("--out", default=None)
    args = p.parse_args()
    import onnxruntime as ort

    info = load_manifest(list_models(args.repo)[0])
    blobs, _, _ = load_labelled_folder(args.images)
    x = np.stack([to_model_input(decode_encoded(b, ImageLimits(), size=info.input_shape[1:]), info.input_shape,
                                 info.mean, info.std) for b in blobs[:64]])
    report = {"onnxruntime": ort.__version__, "available": ort.get_available_providers(), "exits": []}
    try:
        dev = [OnnxRuntimeBackend(e.onnx, args.device) for e in info.exits]
    except RuntimeError as e:  # the backend refuses a silent CPU fallback and says why
        report["error"] = str(e)
        print(json.dumps(report, indent=1))
        return 1
    cpu = [OnnxRuntimeBackend(e.onnx, "cpu") for e in info.exits]
    report["provider_that_ran"] = dev[0].name
    ok = True
    h_dev, h_cpu, bound = x, x, x
    for k, (d, c) in enumerate(zip(dev, cpu)):
        out_d, out_c = d.run(h_dev), c.run(h_cpu)
        out_b = d.run_bound(bound)
        diff = float(np.abs(out_d[-1] - out_c[-1]).max())
        bound_diff = float(np.abs(out_b[-1] - out_d[-1]).max())
        same_top1 = float((out_d[-1].argmax(1) == out_c[-1].argmax(1)).mean())
        feature_device = None
        if len(out_b) == 2:
            feature_device = out_b[0].device_name()
        t0 = time.perf_counter()
        for _ in range(20):
            d.run(np.repeat(h_dev[:1], 32, axis=0))
        ms32 = 1000 * (time.perf_counter() - t0) / 20
        report["exits"].append({"exit": k, "max_abs_diff_vs_cpu": diff, "top1_agreement_vs_cpu": same_top1,
                                "iobinding_vs_plain": bound_diff, "features_live_on": feature_device,
                                "ms_batch32": round(ms32, 3)})
        ok &= diff <= ATOL and bound_diff <= 1e-5 and same_top1 == 1.0
        if len(out_d) == 2:
            h_dev, h_cpu, bound = out_d[0], out_c[0], out_b[0]
    want = "CUDAExecutionProvider" if args.device == "cuda" else "CPUExecutionProvider"
    ok &= report["provider_that_ran"].endswith(want)
    if args.device == "cuda":
        ok &= all(e["features_live_on"] in (None, "cuda") for e in report["exits"])
    report["ok"] = bool(ok)
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
