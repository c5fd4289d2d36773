"""Export every segment of the embedded default's checkpoint with export.segments.export_segment and print each
file's sha256: run under different MKL / ATen settings to see whether the bytes depend on the CPU's math paths.

    MKL_CBWR=COMPATIBLE python bench/results/export_reproducible_2026-12-01/segment_hashes.py /tmp/out
"""

import hashlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from export.build import model_from_checkpoint  # noqa: E402
from export.segments import export_segment  # noqa: E402
from training.checkpoint import load_checkpoint  # noqa: E402

CHECKPOINT = "models/checkpoints/auxnet56_5-pool4-multiway-distill-cosine-cifar10jpeg-53ep-seed0.pt"

model = model_from_checkpoint(load_checkpoint(CHECKPOINT), CHECKPOINT).eval()
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
x = torch.zeros(1, *model.input_shape())
with torch.no_grad():
    for k in range(model.num_outputs):
        if k:
            x = model.segment(k - 1)(x)[0]
        export_segment(model, k, x, out / f"exit_{k}.onnx")
        print(k, hashlib.sha256((out / f"exit_{k}.onnx").read_bytes()).hexdigest())
