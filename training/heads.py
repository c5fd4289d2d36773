"""python -m training.heads: retrain a trained network's auxiliary heads on its frozen trunk, pooling to a grid.

The shallow exits decide what early exit saves, and a head that averages its feature map to one value per channel
reads 16 numbers at layer 15 of a CIFAR ResNet-56. Kaya et al. ("Shallow-Deep Networks", ICML 2019, Sec. 4) train
internal classifiers on a frozen network ("IC-only") that keep a small spatial grid instead. This does that to an
AuxNet checkpoint: every auxiliary head becomes BN -> ReLU -> P x P average pool -> fc (ModelConfig.aux_head_pool),
its fc starting from the old one spread over the grid (so it starts as the old head's function) and trained; the
trunk, the final output and every head's batch norm stay exactly as trained. With `--hidden H` each head also gets a
hidden layer beside its fc, fc(p) + down(relu(up(p))) (ModelConfig.aux_head_hidden), its output weights starting at
zero (the head starts as the fc alone computes) and trained with it (RESULTS §60).

Training: `--views` augmented passes over the training split are pushed through the frozen network once, and each
auxiliary head's pooled input (C * P * P values, float16) and the final output's logits are kept; the fcs then train
`--epochs` epochs over that cache, SGD with a one-cycle schedule (Smith & Topin 2019), on the run's own loss
(cross-entropy, plus its self-distillation from the final output when the run used it; training/methods.py).
Nothing reads the test split to choose anything; its top-1 is reported, as training.run reports it.

    python -m training.heads --checkpoint models/checkpoints/X.pt --out runs/heads4 [--pool 4] [--hidden 0] [--views 8] [--epochs 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from server import load_memory
from server.arguments import SEED_MAX, at_least, named, real_in
from server.repository import sha256_file
from training.checkpoint import TRAINING_STATE, checkpoint_splits, load_checkpoint, model_from_checkpoint, save_atomic
from training.data.batches import iterate
from training.methods import OptimConfig, output_losses
from training.model import AuxNet, segment_costs
from training.precision import autocast_factory, pick_device, resolve_precision


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m training.heads", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a training.run checkpoint (file, or a run directory's last.pt)")
    p.add_argument("--out", required=True, type=named, help="directory for last.pt (the network with the new heads) and heads.json")
    p.add_argument("--pool", type=at_least(1), default=4, help="P: the auxiliary heads pool to a P x P grid")
    p.add_argument("--hidden", type=at_least(0, 65536), default=0,
                   help="H: each auxiliary head adds a hidden layer of H units beside its fc (0: the fc alone)")
    p.add_argument("--views", type=at_least(1), default=8, help="augmented passes over the training split to cache")
    p.add_argument("--epochs", type=at_least(1), default=4, help="passes over the cached views")
    p.add_argument("--batch-size", type=at_least(1), default=512)
    p.add_argument("--lr", type=real_in(0, 10, low_open=True), default=0.05, help="the one-cycle schedule's peak learning rate")
    p.add_argument("--weight-decay", type=real_in(0, 1, high_open=True), default=5e-4)
    p.add_argument("--distill-weight", type=real_in(0, 1), default=None, help="default: the checkpoint's own run's")
    p.add_argument("--distill-temperature", type=real_in(0, 100, low_open=True), default=None, help="default: the checkpoint's own run's")
    p.add_argument("--data-dir", default=None, help="where the checkpoint's data set lies (default: where it was trained)")
    p.add_argument("--decode-cache", default=None, help="as training.run's: decoded arrays of a small-image folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="of the frozen network's passes that fill the cache (evaluation is always fp32)")
    p.add_argument("--seed", type=at_least(0, SEED_MAX), default=0)
    p.add_argument("--overwrite", action="store_true", help="replace OUT/last.pt if it exists")
    return p


def pooled_model(source: AuxNet, pool: int, hidden: int = 0) -> AuxNet:
    """`source` with its auxiliary heads pooling to a pool x pool grid (and a `hidden`-wide hidden layer beside the
    fc, ModelConfig.aux_head_hidden): trunk, final head and every head's batch norm copied; each auxiliary fc set to
    the old one spread over the grid, weight / P^2 per cell (the mean of the cells' means is the global mean), and a
    new hidden layer's output weights zero, so the new network computes what the old one did."""
    if source.num_outputs < 2:
        raise ValueError(f"{source.cfg.name()} has no auxiliary outputs: nothing to retrain")
    # ValueError when P does not divide an exit's map
    model = AuxNet(dataclasses.replace(source.cfg, aux_head_pool=pool, aux_head_hidden=hidden))
    state = source.state_dict()
    fresh = model.state_dict()
    for k, head in enumerate(source.heads[:-1]):
        w = head.fc.weight.detach()
        if head.pool == 1:  # (classes, C) -> (classes, C, P, P) / P^2, flattened as the head flattens its grid
            state[f"heads.{k}.fc.weight"] = (w[:, :, None, None] / pool**2).expand(-1, -1, pool, pool).reshape(w.shape[0], -1)
        elif head.pool != pool:  # a grid already: no exact equivalent, start from zeros
            state[f"heads.{k}.fc.weight"] = torch.zeros(w.shape[0], model.heads[k].fc.in_features)
            state[f"heads.{k}.fc.bias"] = torch.zeros(w.shape[0])
        if head.hidden != hidden or head.pool != pool:  # the old hidden layer does not fit: a new one (or none)
            for part in ("up", "down"):
                for name in ("weight", "bias"):
                    state.pop(f"heads.{k}.{part}.{name}", None)
                    if hidden:
                        value = fresh[f"heads.{k}.{part}.{name}"]
                        state[f"heads.{k}.{part}.{name}"] = torch.zeros_like(value) if part == "down" else value
    model.load_state_dict(state)
    return model.eval()


@torch.no_grad()
def cache_views(model: AuxNet, splits, views: int, seed: int, device, precision: str, log=print):
    """Per auxiliary head, the pooled inputs of its fc (float16) and the final logits, over `views` augmented
    passes; view v draws its crops and flips from seed * 1000 + v."""
    autocast = autocast_factory(precision, device)
    channels_last = precision == "bf16"
    net = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    feats, finals, labels = [[] for _ in net.heads[:-1]], [], []
    for v in range(views):
        start = time.time()
        for x, y in iterate(splits.train, splits, 256, True, seed * 1000 + v, device, channels_last):
            with autocast():
                fs = net.exit_features(x)
                for k, head in enumerate(net.heads[:-1]):
                    feats[k].append(head.pooled(fs[k]).half())
                finals.append(net.heads[-1](fs[-1]).float())
            labels.append(y)
        log(f"view {v + 1}/{views}: {len(splits.train)} images in {time.time() - start:.1f} s")
    return [torch.cat(f) for f in feats], torch.cat(finals), torch.cat(labels)


def train_classifiers(model: AuxNet, feats, finals, labels, args, loss_cfg: OptimConfig, log=print) -> None:
    """SGD over the cache. The heads share no parameters, so one optimizer over the summed losses steps each
    exactly as its own would. What trains is each head's classifier (its fc, and its hidden layer if any)."""
    heads = model.heads[:-1]
    modules = [m for head in heads for m in head.classifier()]
    for m in modules:
        m.to(feats[0].device).train()
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay, nesterov=True)
    n, bs = len(labels), args.batch_size
    steps_per_epoch = max(1, n // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        order, total = torch.randperm(n, generator=gen).to(labels.device), torch.zeros((), device=labels.device)
        for s in range(steps_per_epoch):
            i = order[s * bs : (s + 1) * bs]
            losses = [output_losses([head.classify(f[i].float()), finals[i]], labels[i], loss_cfg)[0]
                      for head, f in zip(heads, feats)]
            opt.zero_grad(set_to_none=True)
            sum(losses).backward()
            opt.step()
            sched.step()
            total += sum(loss.detach() for loss in losses)
        log(f"epoch {epoch + 1}/{args.epochs}: mean loss per head {float(total) / steps_per_epoch / len(heads):.4f}")
    for m in modules:
        m.cpu().eval()


@torch.no_grad()
def split_errors(models: list[AuxNet], ds, splits) -> list[dict]:
    """fp32 top-1 and top-5 error (%) per output of each model on a split; the models share one trunk, run once."""
    trunk = models[0]
    wrong1 = [torch.zeros(trunk.num_outputs) for _ in models]
    wrong5 = [torch.zeros(trunk.num_outputs) for _ in models]
    for x, y in iterate(ds, splits, 256, False, 0, torch.device("cpu")):
        fs = trunk.exit_features(x)
        for m, w1, w5 in zip(models, wrong1, wrong5):
            for k, (f, head) in enumerate(zip(fs, m.heads)):
                top = head(f).topk(min(5, head.fc.out_features), dim=1).indices
                w1[k] += (top[:, 0] != y).sum()
                w5[k] += (top != y[:, None]).all(dim=1).sum()
    return [{"top1_err": (100 * w1 / len(ds)).tolist(), "top5_err": (100 * w5 / len(ds)).tolist()} for w1, w5 in zip(wrong1, wrong5)]


def main(args, log=print) -> dict:
    out = Path(args.out)
    if (out / "last.pt").exists() and not args.overwrite:
        raise ValueError(f"{out} already holds a checkpoint (last.pt): pass --overwrite to replace it, or another --out")
    torch.manual_seed(args.seed)
    ckpt = load_checkpoint(args.checkpoint)
    source = model_from_checkpoint(ckpt, args.checkpoint)
    model = pooled_model(source, args.pool, args.hidden)
    run_args, info = ckpt.get("args", {}), ckpt["data"]
    loss_cfg = OptimConfig(
        distill_weight=run_args.get("distill_weight", 0.0) if args.distill_weight is None else args.distill_weight,
        distill_temperature=run_args.get("distill_temperature", 3.0) if args.distill_temperature is None else args.distill_temperature)
    if not 0 <= loss_cfg.distill_weight <= 1:
        raise ValueError(f"--distill-weight {loss_cfg.distill_weight} must be in [0, 1]")
    root = args.data_dir or info.get("data_dir")
    splits = checkpoint_splits(ckpt, root, decode_cache=args.decode_cache)
    if len(splits.train) == 0 or len(splits.val) == 0:
        raise ValueError(f"{info['dataset']} from {root}: training and validation splits must both be non-empty")
    device = pick_device(args.device)
    precision = resolve_precision(args.precision, device)
    per_view = len(splits.train) * (sum(h.fc.in_features for h in model.heads[:-1]) * 2 + model.cfg.num_classes * 4)
    check_cache_fits(args.views, per_view, device, available_memory(device))
    log(f"{model.cfg.name()} from {args.checkpoint}: caching {args.views} views of {len(splits.train)} training images "
        f"({args.views * per_view / 2**30:.2f} GiB on {device}, {precision})")
    start = time.time()
    feats, finals, labels = cache_views(model, splits, args.views, args.seed, device, precision, log)
    train_classifiers(model, feats, finals, labels, args, loss_cfg, log)
    model = model.float().cpu().to(memory_format=torch.contiguous_format).eval()
    source = source.float().cpu().eval()
    val_before, val_after = split_errors([source, model], splits.val, splits)
    test_after, = split_errors([model], splits.test, splits) if len(splits.test) else ({"top1_err": [], "top5_err": []},)
    record = {"source": str(Path(args.checkpoint)), "source_sha256": sha256_file(_checkpoint_file(args.checkpoint)),
              "pool": args.pool, "hidden": args.hidden,
              "views": args.views, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
              "weight_decay": args.weight_decay, "distill_weight": loss_cfg.distill_weight,
              "distill_temperature": loss_cfg.distill_temperature, "seed": args.seed, "precision": precision,
              "trunk_weights": "exponential moving average" if ckpt.get("model_ema") else "last step",
              "val_top1_err_before": val_before["top1_err"], "val_top1_err": val_after["top1_err"],
              "test_top1_err": test_after["top1_err"], "seconds": round(time.time() - start, 1)}
    metrics = {**ckpt.get("metrics", {}), "val_top1_err": val_after["top1_err"], "val_top5_err": val_after["top5_err"],
               "test_top1_err": test_after["top1_err"], "test_top5_err": test_after["top5_err"]}
    new = {k: v for k, v in ckpt.items() if k != "model_ema" and k not in TRAINING_STATE}
    new.update({"model": model.state_dict(), "config": model.cfg.to_dict(), "costs": segment_costs(model),
                "metrics": metrics, "heads": record})
    save_atomic(new, out / "last.pt")
    (out / "heads.json").write_text(json.dumps(record, indent=1) + "\n")
    log(_table(model, record, test_after["top1_err"]))
    return record


CACHE_SHARE = 0.8  # of the memory available before the cache: the rest for the network's passes and evaluation


def check_cache_fits(views: int, per_view: int, device, available: int | None) -> None:
    """ValueError, before any pass, when the cache of `views` views (`per_view` bytes each) would take more than
    CACHE_SHARE of `available` bytes: the cache is held whole, and on an ImageNet-size set it runs to terabytes
    (1.28M images x 3 heads x up to 16k float16 inputs per view), which would end in the kernel's OOM kill after
    hours of passes (reasoned, not tried). Says how many views would fit."""
    if available is None or views * per_view <= CACHE_SHARE * available:
        return
    fit = int(CACHE_SHARE * available // per_view)
    advice = f"pass --views {fit} or fewer" if fit >= 1 else "even one view does not fit: use a smaller --pool"
    raise ValueError(f"caching {views} views takes {views * per_view / 2**30:.2f} GiB on {device}, more than "
                     f"{CACHE_SHARE:.0%} of the {available / 2**30:.2f} GiB available there: {advice}")


def available_memory(device) -> int | None:
    """Bytes free for the cache: on CUDA the device's free memory; on the CPU what the process may still use, the
    smaller of the kernel's MemAvailable and every limited memory cgroup's headroom (server/load_memory.py, which the
    server's loads check too). None where neither is known."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    room = load_memory.available()
    return None if room is None else room.bytes


def _checkpoint_file(path: str) -> Path:
    p = Path(path)
    return p / "last.pt" if p.is_dir() else p


def _table(model: AuxNet, record: dict, test_err: list[float]) -> str:
    rows = ["| output | layer | head input | val top-1 before | val top-1 after | test top-1 after |", "|---|---:|---:|---:|---:|---:|"]
    for k, head in enumerate(model.heads):
        test = f"{100 - test_err[k]:.2f}%" if test_err else "-"
        rows.append(f"| {k} | {model.exits[k]} | {head.fc.in_features} | {100 - record['val_top1_err_before'][k]:.2f}% | "
                    f"{100 - record['val_top1_err'][k]:.2f}% | {test} |")
    return "\n".join(rows) + f"\n({record['seconds']} s; the final output and the trunk unchanged)"


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except (ValueError, OSError, RuntimeError) as e:  # OSError: an --out that is a file, a name too long (cli_fuzz)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
