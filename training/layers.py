"""Leaf layers: pre-activation blocks, the option-A shortcut, the exit head, a gradient scaler."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ShortcutA(nn.Module):
    """Option A of He et al. (2016): subsample by stride, zero-pad the new channels. No parameters,
    which is what reproduces the paper's Table 6 parameter counts."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.stride, self.pad = stride, out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.pad)) if self.pad else x


class PreActBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus lambda * shortcut (Eq. 1). Two layers."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, shortcut_scale: float, option_a: bool = True,
                 preact_shortcut: bool = False):
        super().__init__()
        self.preact_shortcut = preact_shortcut and (stride != 1 or in_ch != out_ch)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.scale = shortcut_scale
        self.shortcut = _shortcut(in_ch, out_ch, stride, option_a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H/s, W/s)
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        # At a stage transition He et al.'s pre-activation code feeds the shortcut the pre-activated input;
        # by default we feed it raw x (the committed models' choice): which trains better is measured on a GPU.
        return out + self.scale * self.shortcut(pre if self.preact_shortcut else x)


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3(stride), BN-ReLU-conv1x1(x4) plus shortcut. Three layers."""

    expansion = 4

    def __init__(self, in_ch: int, mid_ch: int, stride: int, shortcut_scale: float, preact_shortcut: bool = False):
        super().__init__()
        out_ch = mid_ch * self.expansion
        self.bn1, self.conv1 = nn.BatchNorm2d(in_ch), nn.Conv2d(in_ch, mid_ch, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(mid_ch), nn.Conv2d(mid_ch, mid_ch, 3, stride, 1, bias=False)
        self.bn3, self.conv3 = nn.BatchNorm2d(mid_ch), nn.Conv2d(mid_ch, out_ch, 1, bias=False)
        self.scale = shortcut_scale
        self.shortcut = _shortcut(in_ch, out_ch, stride, option_a=False)
        self.preact_shortcut = preact_shortcut and (stride != 1 or in_ch != out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + self.scale * self.shortcut(pre if self.preact_shortcut else x)


def _shortcut(in_ch: int, out_ch: int, stride: int, option_a: bool) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    if option_a:
        return ShortcutA(in_ch, out_ch, stride)
    # ImageNet nets use projection shortcuts (option B), as torchvision's ResNets do.
    return nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)


class ExitHead(nn.Module):
    """BN -> ReLU -> average pool -> fc. The BN is needed because the residual stream of a pre-activation net
    is never normalised (DESIGN.md). `pool` = 1 pools globally (the paper); P > 1 averages the P x P cells of a
    `side` x `side` feature map and the fc reads all C * P * P of them (ModelConfig.aux_head_pool). `hidden` > 0
    adds down(relu(up(p))) to the fc's output (ModelConfig.aux_head_hidden): with `down` at zero the head computes
    exactly what the fc alone does, so a trained fc-only head is its starting point (training/heads.py)."""

    def __init__(self, channels: int, num_classes: int, pool: int = 1, side: int | None = None, hidden: int = 0):
        super().__init__()
        if pool > 1 and (side is None or side % pool):
            raise ValueError(f"a {pool} x {pool} pool grid needs a feature-map side divisible by it, got {side}")
        self.pool = pool
        # A fixed kernel, not adaptive pooling: the ONNX exporter cannot export adaptive pooling of a traced size.
        self.cell = side // pool if pool > 1 else None
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels * pool * pool, num_classes)
        self.hidden = hidden
        if hidden:
            self.up = nn.Linear(channels * pool * pool, hidden)
            self.down = nn.Linear(hidden, num_classes)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C * P * P), the fc's input
        a = F.relu(self.bn(x))
        return a.mean(dim=(2, 3)) if self.pool == 1 else F.avg_pool2d(a, self.cell).flatten(1)

    def classify(self, p: torch.Tensor) -> torch.Tensor:  # (B, C * P * P) -> (B, classes)
        return self.fc(p) + self.down(F.relu(self.up(p))) if self.hidden else self.fc(p)

    def classifier(self) -> list[nn.Module]:
        """The modules after the pooling: what training/heads.py trains on the frozen network."""
        return [self.fc, self.up, self.down] if self.hidden else [self.fc]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        return self.classify(self.pooled(x))


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; multiplies the gradient flowing back by `scale` (used by fast multi-way)."""
    return x if scale == 1.0 else _ScaleGrad.apply(x, scale)
