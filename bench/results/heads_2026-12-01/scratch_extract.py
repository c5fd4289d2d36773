"""Scratch (2026-12-01, §22), run from the repository root as /tmp/heads/extract.py 8: the cache (8 augmented
training views; val and test). The checkpoint it named left the tree when the default was replaced; it is in git
history at commit 7a0db0f. Reformatted by ruff since, unchanged otherwise. Pooled post-BN-ReLU features at each
auxiliary exit of the default checkpoint, for head-only training."""

import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from export.build import model_from_checkpoint
from training.checkpoint import load_checkpoint
from training.data import load_splits
from training.data.batches import iterate

torch.set_num_threads(2)
p = "models/checkpoints/auxnet56_5-multiway-distill-cosine-cifar10jpeg-53ep-seed0.pt"
ck = load_checkpoint(p)
m = model_from_checkpoint(ck, p).eval()
info = ck["data"]
splits = load_splits(
    info["dataset"],
    "../shared/data/cifar10-jpeg",
    val_indices=info["val_indices"],
    split_seed=0,
    image_size=32,
    decode_cache="/tmp/cifar10-decoded",
)
passes = int(sys.argv[1])


def feats(x, bf16):
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), ctx:
        fs = m.exit_features(x)
        logits = [h(f) for h, f in zip(m.heads, fs)]
        out = []
        for k in range(len(fs) - 1):
            a = F.relu(m.heads[k].bn(fs[k])).float()
            out.append(torch.cat([F.adaptive_avg_pool2d(a, 4).flatten(1), a.amax(dim=(2, 3))], 1).half())
        return out, [z.float() for z in logits]


def run(ds, train, seed, bf16):
    F_, L_, Y = None, None, []
    for x, y in iterate(ds, splits, 256, train, seed, torch.device("cpu")):
        f, z = feats(x.contiguous(memory_format=torch.channels_last), bf16)
        F_ = [[a] for a in f] if F_ is None else [o + [a] for o, a in zip(F_, f)]
        L_ = [[a] for a in z] if L_ is None else [o + [a] for o, a in zip(L_, z)]
        Y.append(y)
    return [torch.cat(o).numpy() for o in F_], [torch.cat(o).numpy() for o in L_], torch.cat(Y).numpy()


m = m.to(memory_format=torch.channels_last)
for name, ds in (("val", splits.val), ("test", splits.test)):
    t = time.time()
    f, z, y = run(ds, False, 0, False)
    np.savez(f"/tmp/heads/{name}.npz", **{f"f{k}": a for k, a in enumerate(f)}, **{f"z{k}": a for k, a in enumerate(z)}, y=y)
    print(name, time.time() - t, flush=True)
for e in range(passes):
    t = time.time()
    f, z, y = run(splits.train, True, 1000 + e, True)
    np.savez(f"/tmp/heads/train{e}.npz", **{f"f{k}": a for k, a in enumerate(f)}, **{f"z{k}": a for k, a in enumerate(z)}, y=y)
    print("train pass", e, time.time() - t, flush=True)
