"""python -m training.run: train AuxNet (or the plain-ResNet baseline) and write a checkpoint per epoch.

The paper's recipe is the default (Sec. 4): SGD, momentum 0.9, Nesterov, lr 0.1 / 10 at 40% and 60%
of the epochs, weight decay 1e-4, batch 128, He init, loss weights with nu = 2.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

from server.arguments import SEED_MAX, at_least, layers, named, real_in
from training.checkpoint import TRAINING_STATE, hold_run_directory, load_checkpoint, save_atomic
from training.config import ModelConfig
from training.data import DATASETS, load_splits
from training.data.batches import DEFAULT_WORKERS, iterate
from training.data.device import DeviceData
from training.distributed import all_reduce_mean, barrier, broadcast_model, init_from_env, shard, wrap_ddp
from training.ema import BN_REFRESH_BATCHES, ModelEma
from training.engine import WARMUP_BATCHES, evaluate, train_one_epoch
from training.methods import METHODS, OptimConfig, build_method, loss_weights
from training.model import AuxNet, segment_costs
from training.precision import autocast_factory, pick_device, resolve_precision, tune_cuda_kernels
from training.presets import PRESETS, preset_config
from training.profiling import StepProfiler
from training.report import exit_table

# The options that change what a run learns beyond the paper's recipe (and the loss weighting it tunes), with
# the defaults of checkpoints written before each existed: a resumed run must keep them, and a manifest records
# them (export/build.py) so that a served model says how it was trained.
RECIPE_DEFAULTS = {"schedule": "step", "warmup_epochs": 0, "label_smoothing": 0.0, "distill_weight": 0.0,
                   "distill_temperature": 3.0, "ema_decay": 0.0, "nu": 2.0, "joint_lr_adjust": False,
                   "joint_match_multiway_decay": False}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m training.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    arch = p.add_argument_group("architecture (a preset, or explicit --depth/--exits)")
    arch.add_argument("--preset", choices=sorted(PRESETS), help="a network from the paper's tables")
    arch.add_argument("--family", default="cifar", choices=["cifar", "imagenet"])
    arch.add_argument("--depth", type=at_least(1), help="explicit depth (6n+2 for cifar)")
    arch.add_argument("--exits", type=layers, help="comma-separated exit layers, final included, e.g. 15,25,35,45,56")
    arch.add_argument("--width", type=at_least(1, 64), default=1, help="width factor N")
    arch.add_argument("--shortcut-scale", type=real_in(0, 1), default=1.0, help="lambda of Eq. 1 (0: a plain net, 1: the paper's)")
    arch.add_argument("--preact-shortcut", action="store_true",
                      help="stage-transition shortcuts take BN-ReLU(x) (He et al.'s code) instead of raw x")
    arch.add_argument("--aux-head-pool", type=at_least(1), default=1,
                      help="auxiliary heads average-pool to a P x P grid (1: global, the paper's; see python -m training.heads)")
    arch.add_argument("--image-size", type=at_least(1), default=None,
                      help="training crop of large-image folders (default 224 for the ImageNet family); small "
                           "images train at their own size")
    p.add_argument("--method", default="multiway", choices=METHODS,
                   help="none = ResNet baseline (aux heads are probes); multiway = one-backward equivalent of "
                        "multiway-reference")
    p.add_argument("--dataset", default="synthetic", choices=DATASETS)
    p.add_argument("--data-dir", default="data", help="where the data set lies (or is downloaded to)")
    p.add_argument("--download", action="store_true", help="fetch from the official address, checksum verified")
    p.add_argument("--decode-cache", default=None,
                   help="folder where a small-image folder's decoded arrays are kept (.npy), so later runs skip decoding")
    p.add_argument("--val-size", type=at_least(0), default=None,
                   help="validation images held out of train (default 5000; 10%% for synthetic)")
    p.add_argument("--epochs", type=at_least(1, 1_000_000), default=1)
    p.add_argument("--batch-size", type=at_least(1, 1 << 20), default=128)
    p.add_argument("--lr", type=real_in(0, 10, low_open=True), default=0.1)
    p.add_argument("--momentum", type=real_in(0, 1, high_open=True), default=0.9)
    p.add_argument("--no-nesterov", action="store_true")
    p.add_argument("--weight-decay", type=real_in(0, 1, high_open=True), default=1e-4)
    p.add_argument("--nu", type=real_in(0, 100), default=2.0, help="exponent of the loss weights")
    p.add_argument("--joint-lr-adjust", action="store_true",
                   help="joint: eta_k = eta / sum_{j>=k} gamma_j over auxiliary outputs (Sec. 3.2.1)")
    p.add_argument("--joint-match-multiway-decay", action="store_true",
                   help="joint: per-segment weight decay equal to what multiway applies (ablation)")
    recipe = p.add_argument_group("recipe options beyond the paper (off by default)")
    recipe.add_argument("--schedule", default="step", choices=["step", "cosine"],
                        help="step: lr/10 at 40%% and 60%% of the epochs (paper); cosine: after --warmup-epochs")
    recipe.add_argument("--warmup-epochs", type=at_least(0), default=0)
    recipe.add_argument("--label-smoothing", type=real_in(0, 1, high_open=True), default=0.0)
    recipe.add_argument("--distill-weight", type=real_in(0, 1), default=0.0,
                        help="self-distillation: auxiliary outputs learn this much from the final output")
    recipe.add_argument("--distill-temperature", type=real_in(0, 100, low_open=True), default=3.0)
    recipe.add_argument("--ema-decay", type=real_in(0, 1, high_open=True), default=0.0,
                        help="evaluate and export an exponential moving average of the weights (e.g. 0.999; 0 = off)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--seed", type=at_least(0, SEED_MAX), default=0)
    p.add_argument("--out", default="runs/default", type=named, help="run directory: last.pt, metrics.jsonl")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an OUT that holds a run (its metrics.jsonl is cleared, last.pt replaced)")
    p.add_argument("--max-batches", type=at_least(1), default=None, help="cap batches per epoch (smoke tests)")
    p.add_argument("--no-eval", action="store_true",
                   help="skip the validation and test passes after each epoch (speed probes: with --compile, the first "
                        "pass compiles the evaluation graphs too)")
    p.add_argument("--workers", type=at_least(0, 1024), default=DEFAULT_WORKERS,
                   help="loader processes for large image folders (default: 4, or the cores if fewer)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (CUDA graphs on a GPU); the last partial training batch is dropped "
                        "so every step has the same shape")
    p.add_argument("--profile-steps", type=at_least(0), default=0,
                   help="profile this many training steps of the first epoch, after the warm-up batches, into "
                        "OUT/profile_epochN.txt: wall vs device-busy time per step, top operators (training/profiling.py)")
    p.add_argument("--compile-mode", default="auto", choices=COMPILE_MODES,
                   help="torch.compile's mode; auto: reduce-overhead (CUDA graphs) on a GPU, the default elsewhere")
    p.add_argument("--sync-bn", action="store_true",
                   help="torchrun on GPUs: batch-norm statistics over the global batch (SyncBatchNorm)")
    p.add_argument("--grad-sync", choices=["allreduce", "ddp"], default="allreduce",
                   help="torchrun: average gradients by one flat all-reduce after the backward (every method), or "
                        "with DistributedDataParallel during it (none, joint, multiway); bench/ddp_vs_allreduce.py")
    return p


def model_config(args, num_classes: int, image_size: int) -> ModelConfig:
    if args.preset:
        if args.depth or args.exits:
            raise ValueError("give either --preset or --depth/--exits, not both")
        cfg = preset_config(args.preset, num_classes)
        # A preset fixes its family and width; either given otherwise (not their defaults) was ignored without a word.
        if args.width not in (1, cfg.width) or args.family not in ("cifar", cfg.family):
            raise ValueError(f"--preset {args.preset} is the {cfg.family} family at width {cfg.width}; --family "
                             f"{args.family} --width {args.width} contradict it: drop them, or give --depth/--exits")
        # The data decides what the net sees, so training, export and serving agree (issue 10: an ImageNet
        # preset used to declare 224 px while its images were cropped to 32).
        return ModelConfig(**{**cfg.to_dict(), "image_size": image_size, "shortcut_scale": args.shortcut_scale,
                              "preact_shortcut": args.preact_shortcut, "aux_head_pool": args.aux_head_pool})
    if not args.depth:
        raise ValueError("give --preset NAME or --depth D [--exits L1,...,D]")
    exits = tuple(int(e) for e in args.exits.split(",")) if args.exits else (args.depth,)
    return ModelConfig(args.family, args.depth, exits, args.width, num_classes, args.shortcut_scale, image_size,
                       args.preact_shortcut, args.aux_head_pool)


COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode(requested: str, device_type: str) -> str | None:
    """torch.compile's mode. CUDA graphs pay on a GPU, where a CIFAR ResNet step is a thousand short kernel
    launches; whether BatchNorm's running-statistics updates let them be captured in training is for a GPU
    run to show (paper_runs.sh prints inductor's "skipping cudagraphs" lines), hence the choice."""
    if requested == "auto":
        return "reduce-overhead" if device_type == "cuda" else None
    return None if requested == "default" else requested


def intended_image_size(args) -> int:
    """The crop for large-image folders: --image-size, else 224 for the ImageNet family, else 32."""
    if args.image_size:
        return args.image_size
    family = PRESETS[args.preset][0] if args.preset else args.family
    return 224 if family == "imagenet" else 32


def main(args) -> dict:
    torch.manual_seed(args.seed)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a run directory")
    if args.momentum == 0 and not args.no_nesterov:
        raise ValueError("--momentum 0 with Nesterov momentum (the default) is plain SGD: add --no-nesterov")
    if args.warmup_epochs and args.schedule != "cosine":  # the step schedule has no warm-up: it was ignored silently
        raise ValueError(f"--warmup-epochs {args.warmup_epochs} applies to --schedule cosine only; this run's is "
                         f"{args.schedule!r}")
    if args.warmup_epochs and args.warmup_epochs >= args.epochs:
        raise ValueError(f"--warmup-epochs {args.warmup_epochs} must be fewer than --epochs {args.epochs}: the rate "
                         "would never reach --lr")
    if not args.resume and not args.overwrite and (out / "last.pt").exists():
        # Without this a rerun of the command that made OUT replaced its checkpoint after one epoch and appended a
        # second epoch 1 to its metrics.
        raise ValueError(f"{out} already holds a run (last.pt): pass --resume to continue it, --overwrite to start "
                         "it over, or another --out")
    if args.resume and not (out / "last.pt").exists():  # load_checkpoint's "does not exist" named no option
        raise ValueError(f"--resume: {out} holds no run to continue (no last.pt); leave out --resume to start one there")
    ckpt = load_checkpoint(out) if args.resume else None
    if ckpt is not None and (missing := [k for k in TRAINING_STATE if k not in ckpt]):
        raise ValueError(f"--resume: {out / 'last.pt'} holds no training state ({', '.join(missing)}): a copy for "
                         "serving or training.heads' output, which cannot be continued; start a run with another --out")
    if ckpt is not None:
        for key in ("method", "dataset", "preset", "depth", "exits", "width", "seed", "batch_size", "epochs", "lr"):
            if ckpt["args"].get(key) != getattr(args, key):
                raise ValueError(f"--resume: {key} is {getattr(args, key)!r} but the checkpoint was trained with "
                                 f"{ckpt['args'].get(key)!r}; pass the same arguments")
        for key, default in RECIPE_DEFAULTS.items():
            if ckpt["args"].get(key, default) != getattr(args, key):  # recipe options (older checkpoints: defaults)
                raise ValueError(f"--resume: {key} is {getattr(args, key)!r} but the checkpoint was trained with "
                                 f"{ckpt['args'].get(key, default)!r}; pass the same arguments")
    val_size = args.val_size if args.val_size is not None else (256 if args.dataset == "synthetic" else 5000)
    splits = load_splits(args.dataset, args.data_dir, val_size, args.seed, args.download,
                         val_indices=ckpt["data"]["val_indices"] if ckpt else None, image_size=intended_image_size(args),
                         decode_cache=args.decode_cache)
    cfg = model_config(args, len(splits.classes), splits.image_size)
    if ckpt is not None and (before := ModelConfig.from_dict(dict(ckpt["config"]))) != cfg:
        changed = ", ".join(f"{k} was {v!r}, now {getattr(cfg, k)!r}" for k, v in before.to_dict().items() if getattr(cfg, k) != v)
        raise ValueError(f"--resume: the network differs from the checkpoint's ({changed}); pass the same architecture options")
    device = pick_device(args.device)
    dist_info = init_from_env(device.type)
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    tune_cuda_kernels(device)
    precision = resolve_precision(args.precision, device)
    autocast = autocast_factory(precision, device)
    channels_last = precision == "bf16"
    model = AuxNet(cfg)
    costs = segment_costs(model)
    if args.sync_bn:
        if device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA: torch's SyncBatchNorm has no CPU kernel")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    broadcast_model(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = ModelEma(model, args.ema_decay) if args.ema_decay else None  # copied before compiling: evaluated eagerly
    if args.compile:  # in place: the state_dict keeps its keys, so checkpoints and export are unchanged
        model.compile(mode=compile_mode(args.compile_mode, device.type))
    # Small-image sets live on the device for the whole run, batched and augmented there (training/data/device.py).
    on_device = {name: DeviceData(ds, splits, device) for name, ds in
                 (("train", splits.train), ("val", splits.val), ("test", splits.test)) if ds.images is not None and len(ds)}
    optim = OptimConfig(args.lr, args.momentum, not args.no_nesterov, args.weight_decay, args.nu, args.epochs,
                        joint_lr_adjust=args.joint_lr_adjust,
                        joint_match_multiway_decay=args.joint_match_multiway_decay, schedule=args.schedule,
                        warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
                        distill_weight=args.distill_weight, distill_temperature=args.distill_temperature)
    ddp = dist_info.enabled and args.grad_sync == "ddp"
    method = build_method(args.method, model, optim, autocast, all_reduce_mean if dist_info.enabled and not ddp else None,
                          forward_module=wrap_ddp(model, device) if ddp else None)
    start_epoch = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        method.load_state_dict(ckpt["method"])
        if ema is not None:
            ema.load_state_dict(ckpt["model_ema"])
        start_epoch = ckpt["epoch"]
    data_info = {"dataset": args.dataset, "classes": splits.classes, "normalization": splits.normalization(),
                 "augment": splits.augment, "image_size": splits.image_size, "val_indices": splits.val_indices,
                 "data_dir": str(args.data_dir)}
    main_rank = dist_info.is_main  # only rank 0 evaluates, logs and writes checkpoints
    if main_rank:
        lock = hold_run_directory(out)  # noqa: F841 - held, not used: released when this process ends
        _truncate_metrics(out / "metrics.jsonl", start_epoch)  # a fresh start keeps none of an earlier run's rows
    rank = f"[rank {dist_info.rank}/{dist_info.world}] " if dist_info.enabled else ""
    gammas = [round(g, 3) for g in loss_weights(cfg.exits, args.nu)]
    print(f"{rank}{cfg.name()} exits {list(cfg.exits)} gammas {gammas} "
          f"method {method.name} on {device} ({precision}); train {len(splits.train)} val {len(splits.val)} "
          f"test {len(splits.test)}", file=sys.stderr)
    if "train" in on_device:
        n_batches = on_device["train"].num_batches(args.batch_size, drop_last=args.compile)
    else:
        n_batches = -(-len(splits.train) // args.batch_size)
    if args.max_batches:
        n_batches = min(n_batches, args.max_batches)
    profiler = None
    if args.profile_steps:
        first = WARMUP_BATCHES + 1
        if n_batches < first - 1 + args.profile_steps:  # on every rank: one that went on alone would wait forever
            raise ValueError(f"--profile-steps {args.profile_steps} needs {first - 1 + args.profile_steps} batches in "
                             f"an epoch ({WARMUP_BATCHES} warm-up batches first); this epoch has {n_batches}")
        if main_rank:  # named by epoch: a resumed call profiles its own first epoch, the earlier call's file stays
            profiler = StepProfiler(first, args.profile_steps, args.batch_size, device,
                                    out / f"profile_epoch{start_epoch + 1}.txt")
    metrics = {}
    for epoch in range(start_epoch, args.epochs):
        lr = method.base_lr()
        epoch_seed = args.seed * 100003 + epoch  # a resumed run draws exactly the batches of an uninterrupted one
        batches = _train_batches(on_device, splits, device, channels_last, args, epoch_seed)
        if args.max_batches:
            batches = (b for _, b in zip(range(args.max_batches), batches))
        batches = (shard(x, y, dist_info) for x, y in batches)
        stats = train_one_epoch(method, batches, n_batches, f"epoch {epoch + 1}/{args.epochs}", quiet=not main_rank,
                                ema=ema, on_step=profiler if epoch == start_epoch else None)
        if profiler is not None and epoch == start_epoch and profiler.report:
            header = "".join(line + "\n" for line in itertools.takewhile(lambda s: not s.startswith("-"), profiler.report.splitlines()))
            print(f"{header}(whole profile: {profiler.path})", file=sys.stderr)
        method.end_epoch()
        if not main_rank:
            barrier()  # wait for rank 0 to evaluate and checkpoint this epoch
            continue
        if ema is not None:  # the averaged weights' own batch-norm statistics, before they are judged and saved
            ema.refresh_batch_norm(_train_batches(on_device, splits, device, channels_last, args, epoch_seed), autocast,
                                   min(BN_REFRESH_BATCHES, args.max_batches or BN_REFRESH_BATCHES))
        metrics = {"epoch": epoch + 1, "lr": lr, "loss": stats["loss"], "images_per_s": stats["images_per_s"],
                   "images_per_s_with_warmup": stats["images_per_s_with_warmup"], "train_s": stats["train_s"]}
        if not args.no_eval:
            judged = ema.module if ema is not None else model  # the weights that will be exported
            started = time.perf_counter()
            # --val-size 0 trains on the whole training set: no validation figures (they read 100% error before)
            val = evaluate(judged, _eval_batches(on_device.get("val"), splits.val, splits, device, channels_last, args),
                           autocast) if len(splits.val) else {"top1_err": None, "top5_err": None}
            test = evaluate(judged, _eval_batches(on_device.get("test"), splits.test, splits, device, channels_last, args),
                            autocast)
            # eval_s: what evaluation adds to an epoch (the first epoch's includes compiling its graphs), which a
            # schedule sized to a time limit must leave room for (bench/gpu/paper_runs.sh).
            metrics.update({"val_top1_err": val["top1_err"], "val_top5_err": val["top5_err"], "test_top1_err": test["top1_err"],
                            "test_top5_err": test["top5_err"], "eval_s": time.perf_counter() - started})
        metrics["time"] = time.time()
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        extra = {"model_ema": {k: v.cpu() for k, v in ema.state_dict().items()}} if ema is not None else {}
        save_atomic({"model": {k: v.cpu() for k, v in model.state_dict().items()}, **extra, "method": method.state_dict(),
                     "epoch": epoch + 1, "config": cfg.to_dict(), "args": vars(args), "data": data_info,
                     "precision": precision, "costs": costs, "metrics": metrics}, out / "last.pt")
        errors = _epoch_errors(metrics) if not args.no_eval else "not evaluated"
        print(f"epoch {epoch + 1}: {errors} ({stats['images_per_s'] * dist_info.world:.0f} img/s)", file=sys.stderr)
        barrier()
    if dist_info.enabled:
        torch.distributed.destroy_process_group()
    if "val_top1_err" in metrics:
        print(exit_table(costs, {"top1_err": metrics["val_top1_err"]} if metrics["val_top1_err"] is not None else None,
                         {"top1_err": metrics["test_top1_err"], "top5_err": metrics["test_top5_err"]}))
    return metrics


def _epoch_errors(metrics: dict) -> str:
    if metrics["val_top1_err"] is None:
        return f"no validation split; test top1 err per exit {[round(e, 2) for e in metrics['test_top1_err']]}"
    return f"val top1 err per exit {[round(e, 2) for e in metrics['val_top1_err']]}"


def _truncate_metrics(path: Path, epochs_kept: int) -> None:
    """A run killed after logging an epoch but before checkpointing it would log that epoch twice on
    resume: keep only the rows of epochs the checkpoint holds (none for a fresh start)."""
    if path.exists():
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line)["epoch"] <= epochs_kept]
        if len(kept) != len(rows):
            path.write_text("".join(line + "\n" for line in kept))


def _train_batches(on_device, splits, device, channels_last, args, epoch_seed: int):
    if "train" in on_device:
        return on_device["train"].batches(args.batch_size, True, epoch_seed, args.compile, channels_last)
    return iterate(splits.train, splits, args.batch_size, True, epoch_seed, device, channels_last, args.workers)


def _eval_batches(resident, ds, splits, device, channels_last, args):
    if len(ds) == 0:
        return iter(())
    if resident is not None:
        return resident.batches(256, False, 0, channels_last=channels_last)
    return iterate(ds, splits, 256, False, 0, device, channels_last, args.workers)


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except (ValueError, OSError, RuntimeError) as e:  # OSError: a run directory that cannot be written, named by it
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
