"""AuxNet: a pre-activation ResNet with auxiliary exit heads (Guo et al., Sec. 3.1).

The one model contract (CONVENTIONS.md): `forward(x) -> list[Tensor]` of logits, shallow to deep;
`exits` holds their layer indices; `segment(k)` is the part between exit k-1 and exit k as its own
module, which is what export turns into one engine per exit.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from training.config import IMAGENET_STAGES, ModelConfig
from training.layers import ExitHead, PreActBasicBlock, PreActBottleneck, scale_grad


class AuxNet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.exits = cfg.exits
        self.exit_blocks = cfg.exit_blocks
        if cfg.family == "cifar":
            self.stem, blocks, channels = _cifar_trunk(cfg)
        else:
            self.stem, blocks, channels = _imagenet_trunk(cfg)
        self.blocks = nn.ModuleList(blocks)
        # channels[b] and spatial[b]: channels and side of the residual stream after b blocks (b = 0: the stem's output).
        self.channels = channels
        self.spatial = _spatial_sizes(cfg.image_size, self.stem, blocks)
        last = len(self.exit_blocks) - 1
        aux_sides = [self.spatial[b] for b in self.exit_blocks[:-1]]
        for layer, side in zip(self.exits, aux_sides):
            if side % cfg.aux_head_pool:
                common = math.gcd(*aux_sides)
                raise ValueError(f"auxiliary head pool grid {cfg.aux_head_pool} does not divide the {side}x{side} feature "
                                 f"map at exit layer {layer}; valid grids: {[p for p in range(1, common + 1) if common % p == 0]}")
        self.heads = nn.ModuleList(ExitHead(channels[b], cfg.num_classes, 1 if k == last else cfg.aux_head_pool, self.spatial[b],
                                            0 if k == last else cfg.aux_head_hidden)
                                   for k, b in enumerate(self.exit_blocks))
        _he_init(self)

    @property
    def num_outputs(self) -> int:
        return len(self.exits)

    def exit_features(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """Residual-stream features at each exit (up to output index `upto`, inclusive)."""
        last = self.num_outputs - 1 if upto is None else upto
        feats, h, b = [], self.stem(x), 0
        for k in range(last + 1):
            for block in self.blocks[b : self.exit_blocks[k]]:
                h = block(h)
            b = self.exit_blocks[k]
            feats.append(h)
        return feats

    def forward(
        self,
        x: torch.Tensor,
        detach_aux: bool = False,
        trunk_grad_scales: list[float] | None = None,
    ) -> list[torch.Tensor]:
        """Logits of every output, shallow to deep. `detach_aux` makes auxiliary heads probes (method
        `none`); `trunk_grad_scales[k]` scales the gradient output k sends into the trunk (fast multi-way)."""
        feats = self.exit_features(x)
        logits = []
        for k, (f, head) in enumerate(zip(feats, self.heads)):
            if detach_aux and k < self.num_outputs - 1:
                f = f.detach()
            elif trunk_grad_scales is not None:
                f = scale_grad(f, trunk_grad_scales[k])
            logits.append(head(f))
        return logits

    def forward_to(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Logits of output k only, computing no deeper than its exit (pair-wise training)."""
        return self.heads[k](self.exit_features(x, upto=k)[-1])

    # --- segments: the unit of export and of per-output optimizer state -----------------------------

    def trunk_segment_modules(self, k: int) -> list[nn.Module]:
        """Trunk modules between exit k-1 and exit k (the stem belongs to segment 0)."""
        start = 0 if k == 0 else self.exit_blocks[k - 1]
        mods = [self.stem] if k == 0 else []
        return mods + list(self.blocks[start : self.exit_blocks[k]])

    def trunk_segment_params(self, k: int) -> list[nn.Parameter]:
        return [p for m in self.trunk_segment_modules(k) for p in m.parameters()]

    def parameters_to(self, k: int) -> list[nn.Parameter]:
        """Every parameter output k depends on: trunk segments 0..k and head k."""
        trunk = [p for s in range(k + 1) for p in self.trunk_segment_params(s)]
        return trunk + list(self.heads[k].parameters())

    def segment(self, k: int) -> Segment:
        return Segment(self.trunk_segment_modules(k), self.heads[k], final=k == self.num_outputs - 1)

    def prefix_params(self, k: int) -> int:
        """Parameters a network ending at output k holds (Table 6's "params" column)."""
        trunk = sum(p.numel() for s in range(k + 1) for p in self.trunk_segment_params(s))
        return trunk + sum(p.numel() for p in self.heads[k].parameters())

    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.cfg.image_size, self.cfg.image_size)


class Segment(nn.Module):
    """Segment k as a module: (image or features_{k-1}) -> (features_k, logits_k); the final segment
    returns logits only (DESIGN.md, model repository)."""

    def __init__(self, trunk: list[nn.Module], head: nn.Module, final: bool):
        super().__init__()
        self.trunk = nn.Sequential(*trunk)
        self.head = head
        self.final = final

    def forward(self, x: torch.Tensor):
        h = self.trunk(x)
        logits = self.head(h)
        return logits if self.final else (h, logits)


def _cifar_trunk(cfg: ModelConfig) -> tuple[nn.Module, list[nn.Module], list[int]]:
    """Depth 6n+2: conv3x3 (layer 1), 3 stages of n blocks at 16N, 32N, 64N channels, fc (layer L).
    The first conv already has 16N channels, so option-A shortcuts are only needed between stages."""
    n, w = (cfg.depth - 2) // 6, cfg.width
    stem = nn.Conv2d(3, 16 * w, 3, 1, 1, bias=False)
    blocks, channels, in_ch = [], [16 * w], 16 * w
    for stage, out_ch in enumerate((16 * w, 32 * w, 64 * w)):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            blocks.append(PreActBasicBlock(in_ch, out_ch, stride, cfg.shortcut_scale, preact_shortcut=cfg.preact_shortcut))
            in_ch = out_ch
            channels.append(out_ch)
    return stem, blocks, channels


def _imagenet_trunk(cfg: ModelConfig) -> tuple[nn.Module, list[nn.Module], list[int]]:
    """ResNet-18/34 (basic) or 50/101 (bottleneck), pre-activation, projection shortcuts."""
    w = cfg.width
    stem = nn.Sequential(
        nn.Conv2d(3, 64 * w, 7, 2, 3, bias=False), nn.BatchNorm2d(64 * w), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    )
    bottleneck = cfg.depth >= 50
    blocks, channels, in_ch = [], [64 * w], 64 * w
    for stage, count in enumerate(IMAGENET_STAGES[cfg.depth]):
        mid = 64 * w * 2**stage
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            if bottleneck:
                blocks.append(PreActBottleneck(in_ch, mid, stride, cfg.shortcut_scale, cfg.preact_shortcut))
                in_ch = mid * PreActBottleneck.expansion
            else:
                blocks.append(PreActBasicBlock(in_ch, mid, stride, cfg.shortcut_scale, option_a=False,
                                                  preact_shortcut=cfg.preact_shortcut))
                in_ch = mid
            channels.append(in_ch)
    return stem, blocks, channels


def _spatial_sizes(image_size: int, stem: nn.Module, blocks: list[nn.Module]) -> list[int]:
    """Side of the square feature map after b blocks (b = 0: the stem's output), from the strides alone."""
    side = image_size
    for m in stem.modules():  # a lone Conv2d (CIFAR) yields itself; a Sequential (ImageNet) its layers
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            k, s, p = (v if isinstance(v, int) else v[0] for v in (m.kernel_size, m.stride, m.padding))
            side = (side + 2 * p - k) // s + 1
    sides = [side]
    for block in blocks:  # 3x3 convs padded by 1 and 1x1 convs unpadded: a stride s gives (side - 1) // s + 1
        stride = max(m.stride[0] for m in block.modules() if isinstance(m, nn.Conv2d))
        side = (side - 1) // stride + 1
        sides.append(side)
    return sides


def _he_init(model: nn.Module) -> None:
    """He et al. (2015) init for convs, as the paper's recipe; BN to identity; fc as PyTorch default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def count_macs(module: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of convs and fcs in one forward of `x` (batch 1). The ResNet papers report
    these as "FLOPs", and so do we (MFLOPs = 1e6 multiply-adds)."""
    total = 0

    def hook(m, inputs, out):
        nonlocal total
        out = out[0] if isinstance(out, tuple) else out
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
            total += out.numel() // out.shape[0] * k
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    return total


def segment_costs(model: AuxNet) -> list[dict]:
    """Per output: layer, prefix params and prefix MFLOPs, and the segment's own MFLOPs."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, *model.input_shape())
    costs, prefix_macs = [], 0
    for k in range(model.num_outputs):
        seg = model.segment(k)
        trunk_macs = count_macs(seg.trunk, x)
        with torch.no_grad():
            x = seg.trunk(x)
        head_macs = count_macs(seg.head, x)
        prefix_macs += trunk_macs
        costs.append({
            "exit": k, "layer": model.exits[k], "params": model.prefix_params(k),
            "segment_mflops": (trunk_macs + head_macs) / 1e6, "mflops": (prefix_macs + head_macs) / 1e6,
        })
    model.train(was_training)
    return costs
