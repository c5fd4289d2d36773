"""Recipe options beyond the paper (issue 10): each loss and schedule against a hand computation."""

import math

import numpy as np
import pytest
import torch

from training.config import ModelConfig
from training.methods import OptimConfig, build_method, lr_factor, output_losses
from training.model import AuxNet


def log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def logits_and_labels(seed=0, n=6, classes=5, outputs=3):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 2, (n, classes)) for _ in range(outputs)], rng.integers(0, classes, n)


def test_label_smoothing_by_hand():
    zs, y = logits_and_labels()
    eps = 0.1
    losses = output_losses([torch.tensor(z) for z in zs], torch.tensor(y), OptimConfig(label_smoothing=eps))
    for z, got in zip(zs, losses):
        lp = log_softmax(z)
        # target: (1 - eps) on the label, eps spread uniformly over all classes
        expected = np.mean(-(1 - eps) * lp[np.arange(len(y)), y] - eps * lp.mean(axis=1))
        assert got.item() == pytest.approx(expected, rel=1e-6)


def test_self_distillation_by_hand():
    zs, y = logits_and_labels(seed=1)
    a, t = 0.4, 3.0
    losses = output_losses([torch.tensor(z) for z in zs], torch.tensor(y),
                           OptimConfig(distill_weight=a, distill_temperature=t))
    teacher = np.exp(log_softmax(zs[-1] / t))
    for k, z in enumerate(zs):
        ce = np.mean(-log_softmax(z)[np.arange(len(y)), y])
        if k == len(zs) - 1:
            assert losses[k].item() == pytest.approx(ce, rel=1e-6)  # the teacher keeps its own loss
            continue
        kl = np.sum(teacher * (np.log(teacher) - log_softmax(z / t))) / len(y)
        assert losses[k].item() == pytest.approx((1 - a) * ce + a * t * t * kl, rel=1e-6)


def test_distillation_does_not_pull_the_teacher():
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    grads = {}
    for a in (0.0, 0.7):
        torch.manual_seed(0)
        model = AuxNet(ModelConfig(depth=8, exits=(5, 8)))
        method = build_method("joint", model, OptimConfig(distill_weight=a))
        method._zero()
        losses = output_losses(model(x), y, method.cfg)
        sum(g * loss for g, loss in zip(method.gammas, losses)).backward()
        grads[a] = [p.grad.clone() for p in model.heads[-1].parameters()]
        grads[a, "aux"] = [p.grad.clone() for p in model.heads[0].parameters()]
    assert all(torch.allclose(g0, g1) for g0, g1 in zip(grads[0.0], grads[0.7]))  # final head: unchanged
    assert not all(torch.allclose(g0, g1) for g0, g1 in zip(grads[0.0, "aux"], grads[0.7, "aux"]))


def test_cosine_schedule_with_warmup_by_hand():
    cfg = OptimConfig(epochs=10, schedule="cosine", warmup_epochs=2)
    assert [lr_factor(e, cfg) for e in (0, 1)] == [0.5, 1.0]
    assert lr_factor(2, cfg) == 1.0  # cos(0)
    assert lr_factor(6, cfg) == pytest.approx(0.5)  # half way through the 8 cosine epochs
    assert lr_factor(9, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert lr_factor(5, OptimConfig(epochs=10)) == 0.1  # the paper's step schedule is the default


def test_bad_recipe_options_are_refused():
    model = AuxNet(ModelConfig(depth=8, exits=(5, 8)))
    with pytest.raises(ValueError, match="pair-wise runs one partial forward per output"):
        build_method("pairwise", model, OptimConfig(distill_weight=0.5))
    with pytest.raises(ValueError, match="distill weight 1.5 must be in"):
        build_method("multiway", model, OptimConfig(distill_weight=1.5))
    with pytest.raises(ValueError, match="schedule 'linear' unknown"):
        lr_factor(0, OptimConfig(schedule="linear"))


def test_ema_update_by_hand():
    from training.ema import ModelEma

    model = AuxNet(ModelConfig(depth=8, exits=(5, 8)))
    ema = ModelEma(model, 0.9)
    w0 = [p.detach().clone() for p in model.parameters()]
    steps = []
    for delta in (1.0, -0.5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(delta)
        steps.append([p.detach().clone() for p in model.parameters()])
        ema.update(model)
    for e, a, b, c in zip(ema.module.parameters(), w0, *steps):
        # ema_1 = 0.9 w0 + 0.1 w1; ema_2 = 0.9 ema_1 + 0.1 w2
        torch.testing.assert_close(e, 0.9 * (0.9 * a + 0.1 * b) + 0.1 * c)
    with torch.no_grad():
        next(b for b in model.buffers() if b.dtype.is_floating_point).fill_(3.0)
    ema.update(model)
    for eb, b in zip(ema.module.buffers(), model.buffers()):
        assert torch.equal(eb, b)  # buffers are copied, not averaged
    with pytest.raises(ValueError, match="EMA decay 1.0 must be in"):
        ModelEma(model, 1.0)


def test_ema_batch_norm_statistics_are_recomputed_for_the_averaged_weights():
    import contextlib

    from training.ema import ModelEma

    torch.manual_seed(0)
    model = AuxNet(ModelConfig(depth=8, exits=(5, 8)))
    ema = ModelEma(model, 0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # the live weights move far from the averaged ones
    ema.update(model)  # copies the live model's running statistics
    batches = [(torch.randn(6, 3, 32, 32), torch.zeros(6, dtype=torch.long)) for _ in range(4)]
    bn = ema.module.blocks[0].bn1  # its input is the stem's output
    momentum = bn.momentum
    assert ema.refresh_batch_norm(iter(batches), contextlib.nullcontext, limit=3) == 3
    with torch.no_grad():
        per_batch = [ema.module.stem(x) for x, _ in batches[:3]]
    # momentum None: the plain average over the batches of each batch's channel mean and unbiased variance
    mean = torch.stack([h.mean(dim=(0, 2, 3)) for h in per_batch]).mean(0)
    var = torch.stack([h.transpose(0, 1).reshape(h.shape[1], -1).var(dim=1) for h in per_batch]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-4, atol=1e-5)
    assert bn.momentum == momentum and not ema.module.training
    assert not torch.allclose(bn.running_mean, model.blocks[0].bn1.running_mean)  # no longer the live weights'


def test_ema_run_resumes_exactly_and_exports_the_averaged_weights(tmp_path, monkeypatch):
    import training.run as tr
    from export.build import model_from_checkpoint
    from training.checkpoint import load_checkpoint

    args = ["--depth", "8", "--exits", "5,8", "--dataset", "synthetic", "--precision", "fp32", "--device", "cpu",
            "--batch-size", "64", "--max-batches", "3", "--val-size", "64", "--ema-decay", "0.9", "--epochs", "2"]
    tr.main(tr.get_args_parser().parse_args(args + ["--out", str(tmp_path / "straight")]))
    original = tr.save_atomic

    def save_then_die(obj, path):  # killed right after the first epoch's checkpoint
        original(obj, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(tr, "save_atomic", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        tr.main(tr.get_args_parser().parse_args(args + ["--out", str(tmp_path / "killed")]))
    monkeypatch.setattr(tr, "save_atomic", original)
    tr.main(tr.get_args_parser().parse_args(args + ["--out", str(tmp_path / "killed"), "--resume"]))
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "killed")
    for key in a["model_ema"]:
        torch.testing.assert_close(a["model_ema"][key], b["model_ema"][key], rtol=0, atol=0)
    exported = model_from_checkpoint(a, "straight").state_dict()
    assert all(torch.equal(exported[k], a["model_ema"][k]) for k in exported)
    assert any(not torch.equal(a["model_ema"][k], a["model"][k]) for k in exported)
