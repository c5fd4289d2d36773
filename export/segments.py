"""Export segment k to ONNX and check it against torch."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from export.fold import fold_batch_norms
from training.model import AuxNet

OPSET = 17
PARITY_ATOL = 1e-4  # fp32, issue 3: |onnx - torch| <= this x max(1, largest |output|)


def export_segment(model: AuxNet, k: int, example: torch.Tensor, path: Path) -> dict:
    """Write segment k (dynamic batch) and return its I/O description for the manifest."""
    seg = model.segment(k).eval()
    exported = fold_batch_norms(seg)  # same bits on any CPU (export/fold.py); parity is checked against `seg`
    final = k == model.num_outputs - 1
    outputs = ["logits"] if final else ["features", "logits"]
    axes = {name: {0: "batch"} for name in ["input", *outputs]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and shape-inference notes
        torch.onnx.export(exported, (example,), str(path), input_names=["input"], output_names=outputs,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    with torch.no_grad():
        out = seg(example)
    feats = None if final else list(out[0].shape[1:])
    return {"input_name": "input", "outputs": outputs, "input_shape": list(example.shape[1:]), "feature_shape": feats}


def onnx_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def segment_parity(model: AuxNet, paths: list[Path], images: torch.Tensor) -> list[dict]:
    """Max |onnx - torch| of every segment fed the torch chain's inputs, and of the ONNX chain's logits
    against the full model's logits at every exit."""
    model.eval()
    with torch.no_grad():
        full = model(images)
    report, x_torch, x_onnx = [], images, images.numpy()
    for k, path in enumerate(paths):
        sess = onnx_session(path)
        seg = model.segment(k).eval()
        with torch.no_grad():
            t_out = seg(x_torch)
        t_out = (t_out,) if not isinstance(t_out, tuple) else t_out
        o_out = sess.run(None, {"input": x_torch.numpy()})  # same input: segment-level parity
        chain = sess.run(None, {"input": x_onnx})  # ONNX-only chain: end-to-end parity
        seg_diff = max(float(np.abs(o - t.numpy()).max()) for o, t in zip(o_out, t_out))
        chain_diff = float(np.abs(chain[-1] - full[k].numpy()).max())
        # float32 keeps ~7 significant digits: outputs in the thousands (a barely trained net) differ by 1e-3
        # for rounding alone, so the tolerance scales with the largest output magnitude (at least 1).
        scale = max(1.0, *(float(t.abs().max()) for t in t_out), float(full[k].abs().max()))
        report.append({"exit": k, "segment_max_abs_diff": seg_diff, "chain_max_abs_diff": chain_diff,
                       "output_scale": scale})
        if len(t_out) == 2:
            x_torch, x_onnx = t_out[0], chain[0]
    return report
