"""The hooks a missing-modality method gives the training engine (through
pipeline/training/method_step.py, the engine's step strategy for methods).

The trainer calls, per step, `step(forward, x, available, target, ...)` instead of its plain
supervised loss (`forward(x, mask)` is the (DDP-wrapped) network called with `aux=True`, once
per step so DDP sees one forward); after the optimiser step `after_step(net, ...)`; per epoch
`epoch_items(...)` (a custom sampling plan, or None for the default one) and `epoch_end(...)`.
`state_dict()` is JSON-serialisable and goes into the trainer's checkpoint state; tensors a
method must keep across a resume go through `tensor_state()` / `load_tensor_state()`
(checkpoints/epoch_NNNN/method.safetensors).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fine_seg.missing.subsets import schedule_masks
from pipeline.training.data import derive_seed
from pipeline.training.losses import supervised_loss
from pipeline.training.step import StepOutput

Forward = Callable[[torch.Tensor, torch.Tensor], dict[str, Any]]


class MissingMethod:
    """Defaults shared by the methods: modality-dropout schedule, no extra hooks."""

    name = "base"
    keep_all_missing = 0  # LCKD: 1 (a dropped sample always misses one of its modalities)

    def __init__(self, settings: Any, *, num_classes: int, loss_kind: str = "dice_ce", seed: int = 0,
                 modalities: tuple[str, ...] = ("flair", "t1", "t1ce", "t2"), subset_sampling: str = "uniform") -> None:
        self.s = settings
        self.subset_sampling = subset_sampling  # train.modality_subsets
        self.num_classes = num_classes
        self.loss_kind = loss_kind
        self.seed = seed
        self.modalities = tuple(modalities)

    def generator(self, *parts: Any) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.seed, self.name, *parts))

    def masks(self, available: torch.Tensor, global_step: int, total_steps: int) -> torch.Tensor:
        if self.s.dropout == "none":
            return available.bool()
        return schedule_masks(available.cpu(), global_step, total_steps, self.generator("mask", global_step),
                              warmup_fraction=self.s.warmup_fraction, p=self.s.dropout_p,
                              keep_all_missing=self.keep_all_missing,
                              sampling=self.subset_sampling).to(available.device)

    def supervised(self, logits: Any, target: torch.Tensor) -> torch.Tensor:
        return supervised_loss(logits, target, kind=self.loss_kind)

    def step(self, forward: Forward, x: torch.Tensor, available: torch.Tensor, target: torch.Tensor, *,
             global_step: int, total_steps: int, epoch: int, step: int) -> StepOutput:
        raise NotImplementedError

    def epoch_items(self, source: Any, train_ids: list[str], count: int, epoch: int, iters: int,
                    per_step: int) -> list[tuple[str, int]] | None:
        return None

    def start(self, net: torch.nn.Module) -> None:
        """Called once before the first step (also after a resume)."""
        return None

    def after_step(self, net: torch.nn.Module, global_step: int, total_steps: int) -> None:
        return None

    def epoch_end(self, net: torch.nn.Module, epoch: int, source: Any, val_ids: list[str],
                  device: torch.device) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        return None

    def tensor_state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_tensor_state(self, tensors: dict[str, torch.Tensor]) -> None:
        return None
