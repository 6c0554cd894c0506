"""Optimisers (AdamW, SGD+Nesterov) and step-indexed LR schedules (poly or step decay, linear warm-up).

The LR is a pure function of the global step, so a resumed run needs no scheduler state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn


def param_groups(models: Iterable[nn.Module], weight_decay: float) -> list[dict]:
    """No weight decay on biases and norm parameters (1-D tensors); "sgd" merges the groups back."""
    decay, no_decay = [], []
    for model in models:
        for p in model.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(groups: list[dict], kind: str, lr: float, *, momentum: float = 0.99,
                    betas: Sequence[float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """"adamw": decoupled decay, none on 1-D parameters. "sgd": nnU-Net v2's optimiser, i.e.
    torch.optim.SGD(all parameters, lr, momentum 0.99, nesterov, weight_decay): PyTorch's coupled L2
    (grad += wd·p before momentum) on every parameter, norms and biases included, as nnU-Net passes
    `network.parameters()` whole. nnU-Net's values: lr 1e-2, weight_decay 3e-5, poly 0.9, no warm-up."""
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))
    if kind == "sgd":
        params = [p for g in groups for p in g["params"]]
        decay = max((g.get("weight_decay", 0.0) for g in groups), default=0.0)
        return torch.optim.SGD([{"params": params, "weight_decay": decay}], lr=lr, momentum=momentum,
                               nesterov=momentum > 0)
    raise ValueError(f"unknown optimizer {kind!r} (adamw, sgd)")


def lr_factor(step: int, total_steps: int, *, schedule: str = "poly", warmup_steps: int = 0,
              poly_power: float = 0.9, milestones: Sequence[float] = (0.66, 0.86),
              factors: Sequence[float] = (0.1, 0.05)) -> float:
    """Multiplier of the base LR at `step` (0-based) of `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "poly":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return (1 - progress) ** poly_power
    if schedule == "step":
        if len(milestones) != len(factors):
            raise ValueError("step schedule: milestones and factors must have the same length")
        frac = step / max(1, total_steps)
        factor = 1.0
        for m, f in zip(milestones, factors, strict=True):
            if frac >= m:
                factor = f
        return factor
    raise ValueError(f"unknown schedule {schedule!r} (poly, step)")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
