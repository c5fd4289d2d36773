"""Fold each batch norm that directly follows a convolution into that convolution, in float64, before export.

Why not leave it to torch.onnx: its exporter folds Conv -> BatchNorm pairs itself, in float32, through torch's
CPU math, which may call MKL's vector functions, whose code path and last bits depend on the CPU (and on
MKL_CBWR). The same checkpoint exported on an AMD AVX2 CPU and on an Intel AVX-512 one gave different ONNX
files, every difference in a folded convolution's weights or bias (up to 7e-6 relative; on one machine,
MKL_CBWR=COMPATIBLE against the default changes them too: bench/RESULTS.md §27), so a model repository could
not be rebuilt elsewhere and compared by checksum. Here each folded value is computed with IEEE double
operations (multiply, add, divide, square root: each correctly rounded, the same bits on any CPU) and rounded
once to float32; the exporter then finds no pair left to fold.
"""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import torch
from torch import fx, nn


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """A copy of `module` (eval mode) in which every BatchNorm2d fed only by a Conv2d, that convolution feeding
    only it, is folded into the convolution and replaced by an identity. The pairs are found on a torch.fx
    trace; the copy keeps the module tree (and so the exported graph's node names). `module` is not changed."""
    folded = copy.deepcopy(module).eval()
    graph = fx.symbolic_trace(folded).graph
    modules = dict(folded.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    for node in graph.nodes:
        if node.op != "call_module" or type(modules[node.target]) is not nn.BatchNorm2d or calls[node.target] != 1:
            continue
        source = node.args[0]
        if not (isinstance(source, fx.Node) and source.op == "call_module" and type(modules[source.target]) is nn.Conv2d
                and len(source.users) == 1 and calls[source.target] == 1):
            continue  # a convolution whose output is also used unnormalised, or called twice, keeps its BN
        _replace_submodule(folded, source.target, folded_conv(modules[source.target], modules[node.target]))
        _replace_submodule(folded, node.target, nn.Identity())
    return folded


def folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """conv followed by bn (running statistics) as one convolution with a bias:
    w' = w * g / sqrt(var + eps), b' = (b - mean) * g / sqrt(var + eps) + beta, in float64, rounded once.
    NumPy, not torch: torch's CPU square root and division may go through MKL's vector math, whose code path
    (and last bits) depends on the CPU; NumPy's are the IEEE instructions, correctly rounded everywhere."""
    if not bn.track_running_stats or bn.running_var is None:
        raise ValueError("a batch norm without running statistics normalises by the batch and cannot be folded")
    out_ch = conv.out_channels

    def f64(t: torch.Tensor | None, default: float) -> np.ndarray:
        return np.full(out_ch, default) if t is None else t.detach().cpu().numpy().astype(np.float64)

    gamma, beta, bias = f64(bn.weight, 1.0), f64(bn.bias, 0.0), f64(conv.bias, 0.0)
    factor = gamma / np.sqrt(f64(bn.running_var, 1.0) + bn.eps)
    weight = f64(conv.weight, 0.0) * factor.reshape(-1, 1, 1, 1)
    fused = nn.Conv2d(conv.in_channels, out_ch, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                      conv.groups, bias=True, padding_mode=conv.padding_mode)
    with torch.no_grad():
        fused.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
        fused.bias.copy_(torch.from_numpy(((bias - f64(bn.running_mean, 0.0)) * factor + beta).astype(np.float32)))
    return fused.eval()


def _replace_submodule(root: nn.Module, target: str, new: nn.Module) -> None:
    parent_name, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, name, new)
