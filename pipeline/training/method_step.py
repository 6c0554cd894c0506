"""The step strategy of a missing-modality method (`fine.method`, fine_seg/missing/).

The method runs the forward pass(es) and all its loss terms (`MissingMethod.step`, called with
the (DDP-wrapped) network as `forward(x, mask)` with `aux=True`, so DDP sees one forward per step),
may bring its own sampling plan (HGA's modality groups), post-step update (HGA's Reptile
interpolation) and epoch-end work (LCKD's teacher election, PASSION's β update). Its JSON state
lives under `method` in state.json, its tensors in the checkpoint's method.safetensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.training.amp import AmpPolicy
from pipeline.training.step import Batch, EpochPlan, RunContext, StepAt, StepOutput


class MethodStep:
    networks = 1
    uses_unlabeled = False

    def __init__(self, method: Any) -> None:
        self.method = method  # fine_seg.missing.MissingMethod

    def describe(self, run: RunContext) -> str:
        return f"supervised, method {self.method.name}"

    def restore(self, state: dict[str, Any], tensors: dict[str, torch.Tensor] | None, nets: list[nn.Module]) -> None:
        self.method.load_state_dict(state.get("method"))
        if tensors is not None:
            self.method.load_tensor_state(tensors)
        self.method.start(nets[0])

    def begin_epoch(self, run: RunContext, epoch: int, nets: list[nn.Module]) -> EpochPlan:
        plan = self.method.epoch_items(run.source, run.train_ids, run.iters * run.per_step, epoch, run.iters,
                                       run.per_step)
        return EpochPlan(plan, [])

    def loss(self, model: nn.Module, batch: Batch, at: StepAt, policy: AmpPolicy) -> StepOutput:
        with policy.autocast():
            return self.method.step(lambda xx, mm: model(xx, mm, aux=True)[0], batch.x, batch.mask, batch.target,
                                    global_step=at.global_step, total_steps=at.total_steps, epoch=at.epoch,
                                    step=at.step)

    def after_step(self, nets: list[nn.Module], at: StepAt) -> None:
        self.method.after_step(nets[0], at.global_step, at.total_steps)

    def end_epoch(self, run: RunContext, epoch: int, nets: list[nn.Module], parts: dict[str, float]) -> dict[str, Any]:
        return {"method": {**parts, **self.method.epoch_end(nets[0], epoch, run.source, run.val_ids, run.ctx.device)}}

    def state(self) -> dict[str, Any]:
        return {"method": self.method.state_dict()}

    def tensors(self) -> dict[str, torch.Tensor]:
        return self.method.tensor_state()
