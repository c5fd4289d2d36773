"""Checkpoints: one dict {model, method, epoch, config, args, data}, written atomically."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

REQUIRED_KEYS = ("model", "config", "epoch", "data")
# What only `training.run --resume` reads: the optimizers' momentum and the schedulers (3.5 of the 12 MB the 160-epoch
# default's checkpoint had with them).
# A served copy and the heads' checkpoint leave it out: the heads' momentum would belong to the heads they replaced.
TRAINING_STATE = ("method",)


def save_atomic(obj: dict, path: Path) -> None:
    """Write to a temporary file, fsync, then rename: a crash leaves the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_serving_copy(src: str | Path, dst: str | Path) -> None:
    """Copy a checkpoint for export and serving (models/checkpoints/): everything but TRAINING_STATE."""
    ckpt = load_checkpoint(src)
    save_atomic({k: v for k, v in ckpt.items() if k not in TRAINING_STATE}, Path(dst))


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint file, or `last.pt` of a run directory; a clear error for anything else."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        # weights_only: a checkpoint holds tensors, numbers, strings and containers only, so unpickling may not
        # run code: a file handed over by someone else (export --checkpoint DOWNLOADED.pt) cannot execute anything.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises anything (ValueError on text, UnpicklingError, ...)
        raise ValueError(f"checkpoint {path} is corrupt or not a torch checkpoint ({_load_error(e)})") from e
    if not isinstance(ckpt, dict) or (missing := [k for k in REQUIRED_KEYS if k not in ckpt]):
        what = f"lacks keys {missing}" if isinstance(ckpt, dict) else f"is a {type(ckpt).__name__}, not a dict"
        raise ValueError(f"checkpoint {path} {what}; was it written by python -m training.run?")
    return ckpt


def model_from_checkpoint(ckpt: dict, path: str | Path):
    """The network a checkpoint holds, in eval mode: its averaged weights when the run kept them (--ema-decay;
    those were evaluated, those are exported). ValueError, naming the checkpoint, when it does not fit."""
    from training.config import ModelConfig
    from training.model import AuxNet

    try:
        cfg = ModelConfig.from_dict(dict(ckpt["config"]))
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {path}: its model config is incompatible with this version ({e})") from e
    model = AuxNet(cfg)
    try:
        model.load_state_dict(ckpt.get("model_ema") or ckpt["model"])
    except RuntimeError as e:
        first = str(e).splitlines()[0:3]
        raise ValueError(f"checkpoint {path}: weights do not fit the config {cfg.name()} ({' '.join(first)})") from e
    return model.eval()


def checkpoint_splits(ckpt: dict, data_dir: str | Path | None = None, **options):
    """The train / validation / test splits a checkpoint was trained on: its data set, recorded validation
    indices, split seed and image size (the validation split is what export and the heads calibrate on, so it
    must be these images exactly). `data_dir` replaces the recorded folder; `options` go to load_splits."""
    from training.data.registry import load_splits

    info = ckpt["data"]
    return load_splits(info["dataset"], data_dir or info.get("data_dir"), val_indices=info["val_indices"],
                       split_seed=ckpt.get("args", {}).get("seed", 0), image_size=info.get("image_size", 32), **options)


def _load_error(e: Exception) -> str:
    """torch.load's error in a line. Its weights-only refusal is a paragraph advising weights_only=False, the
    very thing not to do with a file of unknown origin; what matters is the unpickler's own reason at its end."""
    text = str(e).strip()
    if isinstance(e, pickle.UnpicklingError) and "WeightsUnpickler error:" in text:
        reason = " ".join(text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0].split())
        return f"it holds something other than tensors, numbers, strings and containers, refused unread: {reason[:200]}"
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else f"{type(e).__name__}: empty or truncated"


def hold_run_directory(out: Path):
    """Create run directory `out` and lock it for this process's lifetime (the lock goes with the process, however it
    ends). Two runs started into one directory used to overwrite each other's checkpoint and interleave their metrics
    (or fail on the other's temporary file); the second is now refused, naming the first. Returns the open lock file,
    which the caller keeps."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    lock = open(out / ".lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise ValueError(f"{out} is in use by another training process (pid {holder}): give another --out, or wait for "
                         "it to end") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock
