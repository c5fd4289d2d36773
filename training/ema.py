"""Exponential moving average of the weights (Polyak & Juditsky 1992; as in Tarvainen & Valpola 2017 and
timm's ModelEmaV2): evaluated and exported instead of the last weights when `--ema-decay` is set (issue 10).

After every optimizer step: ema <- d * ema + (1 - d) * w for every parameter; buffers (batch-norm running
statistics) are copied, since they are already averages.
"""

from __future__ import annotations

import copy

import torch


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

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
