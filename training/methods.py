"""The paper's training methods (Sec. 3.2) behind one small interface.

Every method does the same forward pass and handles outputs shallow -> deep, final last. A method owns
its optimizers and LR schedulers because multi-way needs one optimizer state per output.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.model import AuxNet

METHODS = ("none", "joint", "pairwise", "multiway", "multiway-reference")
ONE_BACKWARD_METHODS = ("none", "joint", "multiway")  # what DistributedDataParallel can train


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.1  # eta, the paper's base rate for batch 128
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    nu: float = 2.0  # exponent of the loss weights gamma_k = max(0.01, (L_k / L_K)^nu)
    epochs: int = 1
    milestones: tuple[float, ...] = (0.4, 0.6)  # lr / 10 at these fractions of the epochs (paper)
    # joint only, Sec. 3.2.1: the trunk segment below auxiliary exit k runs at eta_k = eta / sum_{j>=k} gamma_j,
    # the sum over auxiliary outputs j only (the paper's Eq. 3 keeps the final loss xi apart from the
    # weighted ones); the final segment and the heads keep eta.
    joint_lr_adjust: bool = False
    # joint only, the issue-5 ablation: trunk segment s decays at lambda * sum_{k>=s} c_k, the weight decay
    # multi-way effectively applies (see MultiwayFast). Two differences remain: the trunk sees gamma_k xi_k
    # (multi-way: c_k gamma_k xi_k), and head k's gradient is scaled by gamma_k (multi-way: unscaled).
    joint_match_multiway_decay: bool = False
    # Recipe options beyond the paper (issue 10), all off by default so that every method stays the paper's.
    schedule: str = "step"  # "step": the paper's /10 at milestones; "cosine": cosine decay after a warm-up
    warmup_epochs: int = 0  # cosine only: linear warm-up from lr/W to lr over the first W epochs
    label_smoothing: float = 0.0  # Szegedy et al. 2016, Sec. 7: target (1 - eps) one-hot + eps uniform
    distill_weight: float = 0.0  # alpha: auxiliary outputs also learn from the final output (self-distillation)
    distill_temperature: float = 3.0  # T of the softened teacher and student distributions


def loss_weights(exits: tuple[int, ...], nu: float) -> list[float]:
    """gamma_k = max(0.01, (L_k / L_K)^nu) with L_K the deepest auxiliary exit; the final output 1."""
    if len(exits) == 1:
        return [1.0]
    deepest_aux = exits[-2]
    return [max(0.01, (layer / deepest_aux) ** nu) for layer in exits[:-1]] + [1.0]


def multiway_rate_factors(gammas: list[float]) -> list[float]:
    """c_k with trunk rate eta_k = c_k * eta: 1 / sum_{j>=k, j auxiliary} gamma_j; the final output 1."""
    aux = gammas[:-1]
    return [1.0 / sum(aux[k:]) for k in range(len(aux))] + [1.0]


def lr_factor(epoch: int, cfg: OptimConfig) -> float:
    """Step schedule: divided by 10 at each milestone fraction of the epochs (30 epochs: at 12 and 18).
    A milestone that rounds to epoch 0 is skipped, so a 1-epoch run trains at the base rate.

    Cosine (Loshchilov & Hutter 2017, SGDR, without restarts) after a linear warm-up (Goyal et al. 2017):
    epoch e < W trains at (e + 1) / W; then 0.5 (1 + cos(pi (e - W) / (E - W)))."""
    if cfg.schedule == "cosine":
        w = cfg.warmup_epochs
        if epoch < w:
            return (epoch + 1) / w
        return 0.5 * (1 + math.cos(math.pi * (epoch - w) / max(1, cfg.epochs - w)))
    if cfg.schedule != "step":
        raise ValueError(f"schedule {cfg.schedule!r} unknown; valid: step, cosine")
    passed = sum(0 < round(m * cfg.epochs) <= epoch for m in cfg.milestones)
    return 0.1**passed


def _sgd(params_or_groups, cfg: OptimConfig, lr: float, weight_decay: float | None = None) -> torch.optim.SGD:
    wd = cfg.weight_decay if weight_decay is None else weight_decay
    return torch.optim.SGD(params_or_groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=wd)


class Method:
    """Owns optimizers and schedulers; `step(x, y)` trains on one batch and returns the loss per output."""

    name = "?"

    def __init__(self, model: AuxNet, cfg: OptimConfig, autocast: Callable[[], contextlib.AbstractContextManager],
                 grad_sync: Callable[[list[torch.Tensor]], None] | None = None,
                 forward_module: torch.nn.Module | None = None):
        self.model, self.cfg, self.autocast = model, cfg, autocast
        # Averages gradients across data-parallel ranks (training/distributed.py); a no-op alone.
        self.grad_sync = grad_sync or (lambda tensors: None)
        # What the forward pass calls: the model, or DistributedDataParallel around it (which then averages
        # the gradients during the one backward pass; parameters and optimizers stay the model's own).
        self.forward_module = forward_module if forward_module is not None else model
        self.gammas = loss_weights(model.exits, cfg.nu)
        self.optimizers: list[torch.optim.Optimizer] = self.build_optimizers()
        self.schedulers = [
            torch.optim.lr_scheduler.LambdaLR(o, lambda e: lr_factor(e, cfg)) for o in self.optimizers
        ]

    def build_optimizers(self) -> list[torch.optim.Optimizer]:
        return [_sgd(self.model.parameters(), self.cfg, self.cfg.lr)]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Train on one batch; returns the loss of every output as one detached tensor on the device."""
        raise NotImplementedError

    def end_epoch(self) -> None:
        for s in self.schedulers:
            s.step()

    def base_lr(self) -> float:
        return self.cfg.lr * self.schedulers[0].lr_lambdas[0](self.schedulers[0].last_epoch)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers],
                "schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["optimizers"]) != len(self.optimizers):
            raise ValueError(
                f"checkpoint holds {len(state['optimizers'])} optimizer states, method {self.name!r} "
                f"needs {len(self.optimizers)}: was it trained with another method?"
            )
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)
        for sch, s in zip(self.schedulers, state["schedulers"]):
            sch.load_state_dict(s)

    def _forward(self, x, **kw) -> list[torch.Tensor]:
        with self.autocast():
            return self.forward_module(x, **kw)

    def _zero(self) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)

    def _sync_grads(self) -> None:
        self.grad_sync([p.grad for p in self.model.parameters() if p.grad is not None])


def _detached(losses: list[torch.Tensor]) -> torch.Tensor:
    """The losses of one step, on the device: reading them (.item()) would wait for the GPU every step."""
    return torch.stack([loss.detach().float() for loss in losses])


def _ce(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)


def output_losses(logits: list[torch.Tensor], y: torch.Tensor, cfg: OptimConfig) -> list[torch.Tensor]:
    """xi_k of every output. With the defaults: plain cross-entropy (the paper).

    Self-distillation (Zhang et al. 2019, "Be Your Own Teacher"; Li et al., ICCV 2019): auxiliary output k
    learns (1 - alpha) xi_k + alpha T^2 KL(softmax(z_K / T) || softmax(z_k / T)), the final output z_K
    detached as the teacher (it is not pulled towards its students); T^2 keeps the gradient scale of the
    soft term independent of T (Hinton et al. 2015). The final output keeps its own loss."""
    ce = [_ce(z, y, cfg.label_smoothing) for z in logits]
    if cfg.distill_weight == 0 or len(logits) == 1:
        return ce
    a, t = cfg.distill_weight, cfg.distill_temperature
    teacher = F.softmax(logits[-1].detach().float() / t, dim=1)
    soft = [F.kl_div(F.log_softmax(z.float() / t, dim=1), teacher, reduction="batchmean") * t * t for z in logits[:-1]]
    return [(1 - a) * c + a * s for c, s in zip(ce[:-1], soft)] + [ce[-1]]


class NoneMethod(Method):
    """Plain ResNet: only the final loss trains the trunk; auxiliary heads are probes on detached
    features, so Table 6's ResNet column (intermediate accuracy of an ordinary ResNet) can be measured."""

    name = "none"

    def step(self, x, y):
        self._zero()
        losses = output_losses(self._forward(x, detach_aux=True), y, self.cfg)
        sum(losses).backward()
        self._sync_grads()
        self.optimizers[0].step()
        return _detached(losses)


class JointMethod(Method):
    """One backward of xi + sum_k gamma_k xi_k, one step. With `joint_lr_adjust` the trunk segment
    below auxiliary exit k runs at eta / sum_{j>=k} gamma_j, auxiliary j only (Sec. 3.2.1), which keeps its
    step size bounded."""

    name = "joint"

    def build_optimizers(self):
        cfg = self.cfg
        if not (cfg.joint_lr_adjust or cfg.joint_match_multiway_decay):
            return super().build_optimizers()
        rates = multiway_rate_factors(self.gammas)
        groups = []
        for k in range(self.model.num_outputs):
            group = {"params": self.model.trunk_segment_params(k), "lr": cfg.lr}
            if cfg.joint_lr_adjust and k < self.model.num_outputs - 1 and sum(self.gammas[:-1]) > 1:
                group["lr"] = cfg.lr / sum(self.gammas[k:-1])  # auxiliary weights only (paper)
            if cfg.joint_match_multiway_decay:
                group["weight_decay"] = cfg.weight_decay * sum(rates[k:])
            groups.append(group)
        groups.append({"params": list(self.model.heads.parameters()), "lr": cfg.lr})
        return [_sgd(groups, cfg, cfg.lr)]

    def step(self, x, y):
        self._zero()
        losses = output_losses(self._forward(x), y, self.cfg)
        sum(g * loss for g, loss in zip(self.gammas, losses)).backward()
        self._sync_grads()
        self.optimizers[0].step()
        return _detached(losses)


class PairwiseMethod(Method):
    """For each output in order: forward up to its exit with the current weights, backward
    gamma_k xi_k, step. K+1 partial forwards per batch; parameters without a gradient are not stepped."""

    name = "pairwise"

    def step(self, x, y):
        out = []
        for k in range(self.model.num_outputs):
            self._zero()
            with self.autocast():
                loss = _ce(self.model.forward_to(x, k), y, self.cfg.label_smoothing)
            (self.gammas[k] * loss).backward()
            self._sync_grads()
            self.optimizers[0].step()
            out.append(loss)
        return _detached(out)


class MultiwayReference(Method):
    """Multi-way backpropagation as the authors' group's public code does it: ONE forward, then for each
    output k in order its own backward and its own optimizer step.

    Output k (auxiliary) has an SGD state over the trunk segments below its exit at rate
    c_k * eta, c_k = 1 / sum_{j>=k, aux} gamma_j, fed the gradient of gamma_k * xi_k, and a separate SGD
    over head k at eta fed the gradient of xi_k. The final output uses the base rate over everything it
    reaches. Trunk weights therefore receive several momentum and weight-decay applications per batch.

    Difference from the original: modern autograd forbids changing weights between backward passes of
    one graph, so every output's gradient is taken from the one forward at the pre-step weights, and the
    steps are then applied in order. This class is the exact reference (the test oracle); see
    `MultiwayFast` for the one-backward equivalent used for real runs.
    """

    name = "multiway-reference"

    def build_optimizers(self):
        self.rate_factors = multiway_rate_factors(self.gammas)
        last = self.model.num_outputs - 1
        opts = []
        for k in range(last):
            trunk = [p for s in range(k + 1) for p in self.model.trunk_segment_params(s)]
            opts.append(_sgd(trunk, self.cfg, self.cfg.lr * self.rate_factors[k]))
            opts.append(_sgd(self.model.heads[k].parameters(), self.cfg, self.cfg.lr))
        opts.append(_sgd(self.model.parameters_to(last), self.cfg, self.cfg.lr))
        return opts

    def step(self, x, y):
        losses = output_losses(self._forward(x), y, self.cfg)
        last = self.model.num_outputs - 1
        grads = []
        for k, loss in enumerate(losses):
            trunk = [p for s in range(k + 1) for p in self.model.trunk_segment_params(s)]
            head = list(self.model.heads[k].parameters())
            g = torch.autograd.grad(loss, trunk + head, retain_graph=k < last)
            grads.append(([self.gammas[k] * gi for gi in g[: len(trunk)]], list(g[len(trunk):]), trunk, head))
        self.grad_sync([t for g_trunk, g_head, _, _ in grads for t in g_trunk + g_head])  # one all-reduce
        for k, (g_trunk, g_head, trunk, head) in enumerate(grads):
            for p, g in zip(trunk + head, g_trunk + g_head):
                p.grad = g
            if k < last:
                self.optimizers[2 * k].step()
                self.optimizers[2 * k + 1].step()
            else:
                self.optimizers[-1].step()
            for p in trunk + head:
                p.grad = None
        return _detached(losses)


class MultiwayFast(Method):
    """Multi-way in ONE backward pass.

    SGD with momentum (Nesterov or not) and weight decay is linear in its inputs. With all per-output
    gradients taken at the pre-step weights (as the reference does), the buffers v_k of the outputs that
    reach trunk segment s combine into U = sum_k c_k v_k, which follows the ordinary recurrence
        U <- mu U + (G + lambda_s w),   w <- w - eta (G + lambda_s w + mu U)   [Nesterov]
    with G the gradient of sum_k c_k gamma_k xi_k and lambda_s = lambda * sum_{k>=s} c_k. So: one SGD
    (rate eta) with per-segment weight decay lambda_s, fed one backward of sum_k xi_k in which output k's
    gradient into the trunk is scaled by c_k gamma_k (`scale_grad`), so head k still sees grad xi_k.

    Exact when weight decay is 0. Otherwise the reference decays weights already moved by the earlier
    outputs' steps; the difference per step is O(eta^2 * lambda * |grad|), tested in
    tests/training/test_multiway_fast.py.
    """

    name = "multiway"

    def build_optimizers(self):
        self.rate_factors = multiway_rate_factors(self.gammas)
        groups = []
        for s in range(self.model.num_outputs):
            decay = self.cfg.weight_decay * sum(self.rate_factors[s:])
            groups.append({"params": self.model.trunk_segment_params(s), "weight_decay": decay})
        groups.append({"params": list(self.model.heads.parameters()), "weight_decay": self.cfg.weight_decay})
        return [_sgd(groups, self.cfg, self.cfg.lr)]

    def step(self, x, y):
        self._zero()
        scales = [c * g for c, g in zip(self.rate_factors, self.gammas)]
        losses = output_losses(self._forward(x, trunk_grad_scales=scales), y, self.cfg)
        sum(losses).backward()
        self._sync_grads()
        self.optimizers[0].step()
        return _detached(losses)


_REGISTRY = {c.name: c for c in (NoneMethod, JointMethod, PairwiseMethod, MultiwayFast, MultiwayReference)}


def build_method(name: str, model: AuxNet, cfg: OptimConfig, autocast=contextlib.nullcontext, grad_sync=None,
                 forward_module: torch.nn.Module | None = None) -> Method:
    if name not in _REGISTRY:
        raise ValueError(f"unknown training method {name!r}; valid: {', '.join(METHODS)}")
    if forward_module is not None and name not in ONE_BACKWARD_METHODS:
        raise ValueError(f"method {name!r} takes several backward passes per batch, which DistributedDataParallel "
                         f"cannot reduce; use --grad-sync allreduce (DDP: {', '.join(ONE_BACKWARD_METHODS)})")
    if name == "pairwise" and cfg.distill_weight > 0:
        raise ValueError("self-distillation needs the final output in the same forward pass; pair-wise runs one "
                         "partial forward per output: use joint or multiway")
    if not 0 <= cfg.distill_weight <= 1 or cfg.distill_temperature <= 0 or not 0 <= cfg.label_smoothing < 1:
        raise ValueError(f"distill weight {cfg.distill_weight} must be in [0, 1], temperature "
                         f"{cfg.distill_temperature} > 0, label smoothing {cfg.label_smoothing} in [0, 1)")
    if name != "none" and model.num_outputs == 1:
        name = "joint"  # with one output every method is plain SGD on the final loss
    return _REGISTRY[name](model, cfg, autocast, grad_sync, forward_module)
