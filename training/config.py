"""The frozen architecture config shared by training, export and (through the manifest) serving."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

# Blocks per stage of the ImageNet-style ResNets (He et al. 2016, Table 1).
IMAGENET_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
# Section 5.2: exits in the first few layers see features too raw to classify and hurt the trunk.
EARLY_EXIT_WARN_FRACTION = 0.2


@dataclass(frozen=True)
class ModelConfig:
    """An AuxNet-D-M/N: family, depth D, exit layers (final included), width factor N."""

    family: str = "cifar"  # "cifar" (pre-activation ResNet 6n+2) or "imagenet" (ResNet-18/34/50/101)
    depth: int = 56
    exits: tuple[int, ...] = (56,)  # layer indices of every output, shallow to deep; last == depth
    width: int = 1  # channel multiplier N of AuxNet-D-M/N
    num_classes: int = 10
    shortcut_scale: float = 1.0  # lambda of Eq. 1: x_{l+1} = lambda * x_l + F(x_l)
    image_size: int = 32
    # Stage-transition shortcut fed BN-ReLU(x) as in He et al.'s pre-activation code, instead of raw x
    # (issue 10: measure which trains better; raw x is what the committed models use).
    preact_shortcut: bool = False
    # Auxiliary heads average-pool to a P x P grid before their fc (1: global pooling, the paper's). A shallow exit
    # sees few channels, and global pooling throws away where things are; Kaya et al.'s internal classifiers
    # (ICML 2019, "Shallow-Deep Networks") keep a small grid for that reason. Set by `python -m training.heads`.
    aux_head_pool: int = 1
    # Auxiliary heads add a hidden layer of this width beside their fc: fc(p) + down(relu(up(p))) on the pooled p
    # (0: the fc alone). The pooled grid is linear in the features, and one linear map of it leaves exit 0 of the
    # default model at 73.0% on validation where a 512-wide hidden layer reaches 80.8% (RESULTS §60). Set by
    # `python -m training.heads --hidden H`, as the grid.
    aux_head_hidden: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "exits", tuple(sorted(int(e) for e in self.exits)))
        validate_exits(self)

    @property
    def layers_per_block(self) -> int:
        return 3 if self.family == "imagenet" and self.depth >= 50 else 2

    @property
    def num_blocks(self) -> int:
        if self.family == "cifar":
            return (self.depth - 2) // 2
        return sum(IMAGENET_STAGES[self.depth])

    @property
    def exit_blocks(self) -> tuple[int, ...]:
        """Number of residual blocks below each output (DESIGN.md: exit L_k sits after block (L_k-1)/lpb)."""
        return tuple(
            self.num_blocks if layer == self.depth else (layer - 1) // self.layers_per_block
            for layer in self.exits
        )

    def valid_exit_layers(self) -> list[int]:
        return [1 + b * self.layers_per_block for b in range(1, self.num_blocks)] + [self.depth]

    def name(self) -> str:
        stem = "AuxNet" if len(self.exits) > 1 else "ResNet"
        name = f"{stem}-{self.depth}" + (f"-{len(self.exits)}" if len(self.exits) > 1 else "")
        # A network with He et al.'s stage-transition shortcuts is another architecture (same parameters, other
        # function): say so wherever it is named (manifests, `export choose` tables, logs).
        return (name + (f"/{self.width}" if self.width != 1 else "") + ("-preact" if self.preact_shortcut else "")
                + (f"-pool{self.aux_head_pool}" if self.aux_head_pool != 1 else "")
                + (f"-mlp{self.aux_head_hidden}" if self.aux_head_hidden else ""))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{**d, "exits": tuple(d.get("exits", (d.get("depth", 56),)))})


def validate_exits(cfg: ModelConfig) -> None:
    """Raise ValueError for an impossible architecture; warn for an exit in the first few layers."""
    if cfg.family == "cifar":
        if cfg.depth < 8 or (cfg.depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth {cfg.depth} is not 6n+2 with n >= 1; valid: 8, 14, 20, 26, ...")
    elif cfg.family == "imagenet":
        if cfg.depth not in IMAGENET_STAGES:
            raise ValueError(f"ImageNet ResNet depth {cfg.depth} unsupported; valid: {sorted(IMAGENET_STAGES)}")
    else:
        raise ValueError(f"family {cfg.family!r} unknown; valid: 'cifar', 'imagenet'")
    if cfg.width < 1:
        raise ValueError(f"width factor {cfg.width} must be a positive integer")
    if cfg.aux_head_hidden < 0:
        raise ValueError(f"auxiliary head hidden width {cfg.aux_head_hidden} must be at least 0 (0 = the fc alone)")
    if cfg.aux_head_pool < 1:
        raise ValueError(f"auxiliary head pool grid {cfg.aux_head_pool} must be at least 1 (1 = global average pooling)")
    if cfg.num_classes < 2:
        raise ValueError(f"num_classes {cfg.num_classes} must be at least 2")
    valid = cfg.valid_exit_layers()
    if len(set(cfg.exits)) != len(cfg.exits):
        raise ValueError(f"exit layers {list(cfg.exits)} contain duplicates (depth {cfg.depth}); valid: {valid}")
    for layer in cfg.exits:
        if layer > cfg.depth or layer < 1:
            raise ValueError(f"exit layer {layer} is beyond depth {cfg.depth}; valid: {valid}")
        if layer not in valid:
            raise ValueError(f"exit layer {layer} is not on a block boundary of depth {cfg.depth}; valid: {valid}")
    if cfg.exits[-1] != cfg.depth:
        raise ValueError(f"the last output must be the final layer {cfg.depth}; got exits {list(cfg.exits)}")
    for layer in cfg.exits[:-1]:
        if layer < EARLY_EXIT_WARN_FRACTION * cfg.depth:
            warnings.warn(
                f"exit at layer {layer} of {cfg.depth} is in the first {EARLY_EXIT_WARN_FRACTION:.0%} of the "
                "network; the paper (Sec. 5.2) finds such shallow outputs hurt the deeper ones",
                stacklevel=3,
            )
