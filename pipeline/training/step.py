"""What one optimiser step computes, as one strategy per kind of training.

The engine (`trainer.py`) owns what every kind shares: the sampling plans and batches, the LR,
AMP, the optimiser step, checkpoints, validation and the logs. A `TrainStep` owns what differs:

    plain    the supervised loss of the network                         (this module)
    cps      + cross pseudo supervision on labeled and unlabeled scans,
             with the uncertainty-filtered (UIF) pool                    (cps.py)
    method   a missing-modality method's forward passes and losses      (method_step.py)

A new kind of training is one module implementing the protocol below; `trainer.build_step` picks it.
Strategies keep their resumable state in the trainer's `state` (JSON, `state()`/`restore()`) and
their tensors in the checkpoint's `method.safetensors` (`tensors()`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from pipeline.training.amp import AmpPolicy
from pipeline.training.data import SampleSource
from pipeline.training.distributed import DistContext
from pipeline.training.losses import supervised_loss


@dataclass
class StepOutput:
    loss: torch.Tensor  # what is back-propagated
    sup: torch.Tensor  # its supervised segmentation part (logged as `sup`)
    parts: dict[str, float] = field(default_factory=dict)  # further terms, averaged per epoch for the log


@dataclass(frozen=True)
class StepAt:
    """Where in training a step is (0-based epoch/step, global step over the whole run)."""

    epoch: int
    step: int
    global_step: int
    total_steps: int
    iters: int  # steps per epoch


@dataclass
class Batch:
    x: torch.Tensor  # the labeled rows, then the unlabeled ones
    mask: torch.Tensor  # [B, N] modality availability
    target: torch.Tensor  # labels of the labeled rows
    case_ids: list[str]  # labeled cases


@dataclass
class RunContext:
    """What the epoch hooks of a strategy may need of the run (built once by the trainer)."""

    spec: Any  # trainer.StageSpec
    source: SampleSource
    cfg: Any  # pipeline.config.TrainSection
    ctx: DistContext
    policy: AmpPolicy
    out_dir: Path
    train_ids: list[str]
    val_ids: list[str]
    unlabeled_ids: list[str]
    iters: int = 1
    per_step: int = 1  # labeled samples per step over all processes


@dataclass
class EpochPlan:
    labeled: list[tuple[str, int]] | None = None  # (case, item seed) over all processes; None → the default plan
    unlabeled_pool: list[str] = field(default_factory=list)  # unlabeled cases to draw from this epoch


class TrainStep(Protocol):
    networks: int  # networks trained together (CPS: 2)
    uses_unlabeled: bool  # whether each step also takes an unlabeled batch

    def describe(self, run: RunContext) -> str: ...
    def restore(self, state: dict[str, Any], tensors: dict[str, torch.Tensor] | None, nets: list[nn.Module]) -> None:
        """Before the first step: state.json's state (and tensors, when resumed) of this strategy."""

    def begin_epoch(self, run: RunContext, epoch: int, nets: list[nn.Module]) -> EpochPlan: ...
    def loss(self, model: nn.Module, batch: Batch, at: StepAt, policy: AmpPolicy) -> StepOutput: ...
    def after_step(self, nets: list[nn.Module], at: StepAt) -> None: ...
    def end_epoch(self, run: RunContext, epoch: int, nets: list[nn.Module], parts: dict[str, float]) -> dict[str, Any]:
        """Metrics of the epoch for the log and summary.json (`parts`: epoch means of StepOutput.parts)."""

    def state(self) -> dict[str, Any]:
        """Entries of the trainer's state.json this strategy owns."""

    def tensors(self) -> dict[str, torch.Tensor]: ...


def rows(out: Any, n: int) -> Any:
    """The first n rows of an output (a deep-supervision list or one tensor)."""
    return [o[:n] for o in out] if isinstance(out, list) else out[:n]


def forward_supervised(model: nn.Module, batch: Batch, loss_kind: str,
                       policy: AmpPolicy) -> tuple[list[Any], torch.Tensor]:
    """Every network's outputs and the sum of their supervised losses on the labeled rows."""
    with policy.autocast():
        outs = model(batch.x, batch.mask)
    n = batch.target.shape[0]
    return outs, sum(supervised_loss(rows(o, n), batch.target, kind=loss_kind) for o in outs)


class PlainStep:
    """Supervised training of one network on the labeled cases."""

    networks = 1
    uses_unlabeled = False

    def __init__(self, loss_kind: str) -> None:
        self.loss_kind = loss_kind

    def describe(self, run: RunContext) -> str:
        return "supervised"

    def restore(self, state: dict[str, Any], tensors: dict[str, torch.Tensor] | None, nets: list[nn.Module]) -> None:
        return None

    def begin_epoch(self, run: RunContext, epoch: int, nets: list[nn.Module]) -> EpochPlan:
        return EpochPlan()

    def loss(self, model: nn.Module, batch: Batch, at: StepAt, policy: AmpPolicy) -> StepOutput:
        _, sup = forward_supervised(model, batch, self.loss_kind, policy)
        return StepOutput(sup, sup)

    def after_step(self, nets: list[nn.Module], at: StepAt) -> None:
        return None

    def end_epoch(self, run: RunContext, epoch: int, nets: list[nn.Module], parts: dict[str, float]) -> dict[str, Any]:
        return {}

    def state(self) -> dict[str, Any]:
        return {}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}


def main_output(out: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """The full-resolution output of a network that may return a deep-supervision list."""
    return out[0] if isinstance(out, list) else out
