"""Exponential moving average of the weights (Polyak & Juditsky 1992; as in Tarvainen & Valpola 2017 and
timm's ModelEmaV2): evaluated and exported instead of the last weights when `--ema-decay` is set (issue 10).

After every optimizer step: ema <- d * ema + (1 - d) * w for every parameter; buffers (batch-norm running
statistics) are copied from the live model. Those statistics belong to the live weights, not to the averaged
ones, so before the averaged weights are evaluated or saved, `refresh_batch_norm` recomputes them from a few
training batches run through the averaged weights (as torch.optim.swa_utils.update_bn does for SWA). Without
it, a CPU pilot's EMA model (AuxNet-20-5, 15 epochs, decay 0.999; RESULTS §18) was 21.7% wrong at the final
exit on validation; the same run with it, 16.2% (cosine alone, no EMA: 16.6%).
"""

from __future__ import annotations

import copy
import itertools

import torch

BN_REFRESH_BATCHES = 100  # training batches that recompute the averaged weights' batch-norm statistics


class ModelEma:
    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay {decay} must be in (0, 1), e.g. 0.999")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        ema_params = [p for p in self.module.parameters()]
        params = [p.detach() for p in model.parameters()]
        torch._foreach_mul_(ema_params, self.decay)
        torch._foreach_add_(ema_params, params, alpha=1 - self.decay)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)

    @torch.no_grad()
    def refresh_batch_norm(self, batches, autocast, limit: int = BN_REFRESH_BATCHES) -> int:
        """Recompute every batch-norm layer's running mean and variance as the plain average over up to `limit`
        batches (x, y) run through the averaged weights in training mode; returns how many were used. The next
        `update` copies the live statistics over them again, so training itself is unchanged."""
        norms = [m for m in self.module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: every batch counts the same
        self.module.train()
        used = 0
        try:
            for x, _ in itertools.islice(batches, limit):
                with autocast():
                    self.module(x)
                used += 1
        finally:  # an interrupted refresh must not leave the layers averaging cumulatively
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
            self.module.eval()
        return used

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
