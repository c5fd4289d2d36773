"""Is the training pipeline as good as a textbook loop? An independent CIFAR training loop, to set beside
`python -m training.run` on the same data, epochs and hyper-parameters (issue 10: the 53-epoch ResNet-56 ended at
12.8% test error with a training loss of 0.13, which looked high; the next GPU lease should not train on a bug).

Nothing here comes from training/: the JPEGs are decoded with Pillow into one array, the 32x32 crop from the
4-pixel zero padding and the horizontal flip are drawn per image with numpy (torchvision's RandomCrop(32, 4) and
RandomHorizontalFlip), the network is He et al.'s original post-activation ResNet (conv-BN-ReLU, option-A
shortcuts), the loss plain cross-entropy, the optimizer torch's SGD with torch's MultiStepLR. The schedule is
the paper's (lr 0.1, Nesterov momentum 0.9, weight decay 1e-4, batch 128, lr / 10 at 40% and 60% of the epochs,
rounded as training.run rounds them), fp32. It trains on all 50,000 training images and reports the 10,000 test
images' top-1 error once at the end (nothing is chosen on it).

    python -m bench.recipe_check [--data ../shared/data/cifar10-jpeg] [--depth 20] [--epochs 12] [--seed 0]
        [--model postact|auxnet]   # auxnet: training/'s pre-activation network in this loop (model alone differs)

Beside it: python -m training.run --depth 20 --method none --dataset folder --data-dir DATA --val-size 0
    --epochs 12 --precision fp32 --seed 0 --out runs/recipe_check_ours
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def decode_folder(split: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image

    classes = sorted(d.name for d in split.iterdir() if d.is_dir())
    images, labels = [], []
    for i, c in enumerate(classes):
        for f in sorted((split / c).iterdir()):
            with Image.open(f) as im:
                images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            labels.append(i)
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes


def augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(B, 32, 32, 3) uint8 -> the same, each image cropped from its 4-pixel zero padding and flipped at random."""
    padded = np.pad(batch, ((0, 0), (4, 4), (4, 4), (0, 0)))
    out = np.empty_like(batch)
    for i in range(len(batch)):
        top, left = rng.integers(0, 9, size=2)
        crop = padded[i, top:top + 32, left:left + 32]
        out[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return out


class Block(nn.Module):
    """He et al. (2016a), CIFAR: conv-BN-ReLU-conv-BN, plus the shortcut, then ReLU; option A between stages."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.stride, self.extra = stride, cout - cin

    def forward(self, x):
        out = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        short = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
        if self.extra:
            short = F.pad(short, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return F.relu(out + short)


class PostActResNet(nn.Module):
    def __init__(self, depth: int, classes: int = 10):
        super().__init__()
        n = (depth - 2) // 6
        layers, cin = [], 16
        for stage, cout in enumerate((16, 32, 64)):
            for i in range(n):
                layers.append(Block(cin, cout, 2 if stage and i == 0 else 1))
                cin = cout
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.body, self.fc = nn.Sequential(*layers), nn.Linear(64, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.fc(self.body(self.stem(x)).mean(dim=(2, 3)))


def build(kind: str, depth: int) -> nn.Module:
    if kind == "postact":
        return PostActResNet(depth)
    from training.config import ModelConfig
    from training.model import AuxNet

    net = AuxNet(ModelConfig("cifar", depth, (depth,), 1, 10))
    return _Final(net)


class _Final(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)[-1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser("python -m bench.recipe_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/cifar10-jpeg")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", choices=("postact", "auxnet"), default="postact")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    tx, ty, classes = decode_folder(Path(args.data) / "train")
    sx, sy, test_classes = decode_folder(Path(args.data) / "test")
    assert classes == test_classes, (classes, test_classes)
    mean = tx.reshape(-1, 3).mean(0) / 255
    std = tx.reshape(-1, 3).std(0) / 255
    print(f"decoded {len(tx)} train and {len(sx)} test images in {time.perf_counter() - started:.0f} s; "
          f"mean {np.round(mean, 4).tolist()} std {np.round(std, 4).tolist()}", file=sys.stderr)

    def tensor(batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float() / 255
        return (x - torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)) / torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    model = build(args.model, args.depth)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    milestones = sorted({round(m * args.epochs) for m in (0.4, 0.6)} - {0})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)
    rows = []
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(len(tx))
        total, seen, t0 = 0.0, 0, time.perf_counter()
        for start in range(0, len(order), 128):
            idx = order[start:start + 128]
            x, y = tensor(augment(tx[idx], rng)), torch.from_numpy(ty[idx])
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        rows.append({"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "loss": total / seen,
                     "images_per_s": seen / (time.perf_counter() - t0)})
        sched.step()
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(sx), 500):
            correct += int((model(tensor(sx[start:start + 500])).argmax(1) == torch.from_numpy(sy[start:start + 500])).sum())
    result = {"model": args.model, "depth": args.depth, "epochs": args.epochs, "seed": args.seed,
              "test_top1_err": 100 - 100 * correct / len(sx), "final_train_loss": rows[-1]["loss"], "epochs_log": rows,
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    print(f"{args.model} ResNet-{args.depth}, {args.epochs} epochs, seed {args.seed}: test top-1 error "
          f"{result['test_top1_err']:.2f}%, final training loss {rows[-1]['loss']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
