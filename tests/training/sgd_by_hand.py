"""SGD with momentum, Nesterov and weight decay written out by hand: the reference the tests compare
the training methods against (the formulas of torch.optim.SGD's documentation)."""

import torch


def sgd_by_hand(params, grads, bufs: dict, lr: float, momentum: float, wd: float, nesterov: bool = True) -> None:
    with torch.no_grad():
        for p, g in zip(params, grads):
            d = g + wd * p
            key = id(p)
            bufs[key] = d.clone() if key not in bufs else momentum * bufs[key] + d
            step = d + momentum * bufs[key] if nesterov else bufs[key]
            p -= lr * step
