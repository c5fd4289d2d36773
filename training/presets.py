"""Named constructors for every network in the paper's tables, over one registry (timm style)."""

from __future__ import annotations

from training.config import ModelConfig
from training.model import AuxNet

# name -> (family, depth, exits, width). Exits as in the paper's tables (Tables 1-6), final included.
PRESETS: dict[str, tuple[str, int, tuple[int, ...], int]] = {
    "resnet20": ("cifar", 20, (20,), 1),
    "resnet32": ("cifar", 32, (32,), 1),
    "resnet44": ("cifar", 44, (44,), 1),
    "resnet56": ("cifar", 56, (56,), 1),
    "resnet110": ("cifar", 110, (110,), 1),
    "auxnet20_2": ("cifar", 20, (17, 20), 1),
    "auxnet32_2": ("cifar", 32, (25, 32), 1),
    "auxnet44_2": ("cifar", 44, (35, 44), 1),
    "auxnet44_3": ("cifar", 44, (25, 35, 44), 1),
    "auxnet56_2": ("cifar", 56, (45, 56), 1),
    "auxnet56_5": ("cifar", 56, (15, 25, 35, 45, 56), 1),
    "auxnet56_10": ("cifar", 56, (13, 17, 21, 25, 29, 33, 37, 41, 45, 56), 1),
    "auxnet26_2_w10": ("cifar", 26, (19, 26), 10),
    "auxnet56_2_w2": ("cifar", 56, (45, 56), 2),
    "auxnet56_5_w2": ("cifar", 56, (15, 25, 35, 45, 56), 2),
    "resnet18": ("imagenet", 18, (18,), 1),
    "resnet34": ("imagenet", 34, (34,), 1),
    "resnet50": ("imagenet", 50, (50,), 1),
    "resnet101": ("imagenet", 101, (101,), 1),
    "auxnet34_2": ("imagenet", 34, (29, 34), 1),
    "auxnet50_2": ("imagenet", 50, (40, 50), 1),
    "auxnet50_4": ("imagenet", 50, (22, 31, 40, 50), 1),
    "auxnet101_2": ("imagenet", 101, (88, 101), 1),
}


def preset_config(name: str, num_classes: int | None = None) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(sorted(PRESETS))}")
    family, depth, exits, width = PRESETS[name]
    classes = num_classes or (1000 if family == "imagenet" else 10)
    return ModelConfig(family, depth, exits, width, classes, image_size=224 if family == "imagenet" else 32)


def build_model(cfg: ModelConfig) -> AuxNet:
    return AuxNet(cfg)
