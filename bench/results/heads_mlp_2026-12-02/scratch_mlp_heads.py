"""Scratch experiment of RESULTS §60: residual MLP auxiliary heads on the frozen default network's cached pooled
features, judged by validation top-1 only. `python scratch_mlp_heads.py VIEWS` from the repository root.

Kept as run, reformatted for the linter afterwards (same statements); the row list below is the 8-view run's, the
4-view run's was [(0, 4), (128, 4), (256, 8)] (scratch_4views.log). training.heads --hidden is the real command.
"""

import sys
import time

import torch

sys.path.insert(0, "/work/main")
from training.checkpoint import checkpoint_splits, load_checkpoint, model_from_checkpoint  # noqa: E402
from training.data.batches import iterate  # noqa: E402
from training.heads import cache_views  # noqa: E402
from training.methods import OptimConfig, output_losses  # noqa: E402

CK = "/work/main/models/checkpoints/auxnet56_5-pool4-multiway-distill-cosine-cifar10jpeg-53ep-seed0.pt"
ckpt = load_checkpoint(CK)
model = model_from_checkpoint(ckpt, CK).eval()
splits = checkpoint_splits(ckpt, "/work/shared/data/cifar10-jpeg", decode_cache="/tmp/cifar10-decoded")
views = int(sys.argv[1]) if len(sys.argv) > 1 else 4
t = time.time()
feats, finals, labels = cache_views(model, splits, views, 0, torch.device("cpu"), "bf16")
print("cache", time.time() - t, [f.shape for f in feats])
run_args = ckpt.get("args", {})
cfg = OptimConfig(distill_weight=run_args.get("distill_weight", 0.0),
                  distill_temperature=run_args.get("distill_temperature", 3.0))
print("distill", cfg.distill_weight, cfg.distill_temperature)

# validation pooled features (no augmentation)
vf, vy = [[] for _ in feats], []
with torch.no_grad():
    for x, y in iterate(splits.val, splits, 256, False, 0, torch.device("cpu")):
        fs = model.exit_features(x)
        for k, h in enumerate(model.heads[:-1]):
            vf[k].append(h.pooled(fs[k]))
        vy.append(y)
vf = [torch.cat(f) for f in vf]
vy = torch.cat(vy)
base = [float((h.fc(f).argmax(1) == vy).float().mean()) for h, f in zip(model.heads[:-1], vf)]
print("val top1 current heads", [round(100 * b, 2) for b in base])


class Res(torch.nn.Module):
    def __init__(self, fc, hidden):
        super().__init__()
        self.fc = torch.nn.Linear(fc.in_features, fc.out_features)
        self.fc.load_state_dict(fc.state_dict())
        self.hidden = hidden
        if hidden:
            self.up = torch.nn.Linear(fc.in_features, hidden)
            self.down = torch.nn.Linear(hidden, fc.out_features)
            torch.nn.init.zeros_(self.down.weight)
            torch.nn.init.zeros_(self.down.bias)

    def forward(self, x):
        out = self.fc(x)
        return out + self.down(torch.relu(self.up(x))) if self.hidden else out


def train(hidden, epochs=4, lr=0.05, wd=5e-4, bs=512):
    heads = [Res(h.fc, hidden) for h in model.heads[:-1]]
    params = [p for h in heads for p in h.parameters()]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd, nesterov=True)
    n = len(labels)
    spe = n // bs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * spe, pct_start=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for s in range(spe):
            i = order[s * bs:(s + 1) * bs]
            loss = sum(output_losses([h(f[i].float()), finals[i]], labels[i], cfg)[0] for h, f in zip(heads, feats))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        return [round(100 * float((h(f).argmax(1) == vy).float().mean()), 2) for h, f in zip(heads, vf)]


for hidden, epochs in [(512, 8), (512, 16), (1024, 16)]:
    t = time.time()
    print("hidden", hidden, "epochs", epochs, train(hidden, epochs), round(time.time() - t, 1), "s", flush=True)
