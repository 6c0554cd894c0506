"""Cross pseudo supervision (Chen et al., CVPR 2021), as CSSN uses it, with CSSN's label bug fixed.

Each network learns from the other's detached argmax pseudo-labels over the softmax classes
*including background* (CSSN took the argmax over 13 organ channels, one-hot encoded it with 14
classes and dropped column 0: the pseudo-labels were shifted by one class, liver vanished and
there was no background).

`CPSStep` is the engine's step strategy for CPS (pipeline/training/step.py): the two networks'
supervised losses plus the ramped-up CPS term, the unlabeled pool refreshed by UIF (uif.py).

With `train.cps.cutmix` the unlabeled rows are CutMixed as in the CPS paper's strongest variant
(section 3.2, after French et al.): both networks first label the unmixed patches (no gradient),
then each learns on the mixed patches from the other's pseudo-labels mixed by the same box. Two
networks that saw the same labeled scans agree on plain unlabeled patches, so without such a
perturbation the CPS term has little to teach.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from pipeline.training import uif
from pipeline.training.amp import AmpPolicy
from pipeline.training.data import derive_seed
from pipeline.training.losses import supervised_loss
from pipeline.training.step import (
    Batch,
    EpochPlan,
    RunContext,
    StepAt,
    StepOutput,
    forward_supervised,
    main_output,
)


def pseudo_labels(logits: torch.Tensor) -> torch.Tensor:
    """Hard pseudo-labels [B,Z,Y,X] in 0..K-1 (0 = background), detached from the graph."""
    return logits.detach().argmax(1).to(torch.uint8)


def cps_loss(logits_a: torch.Tensor, logits_b: torch.Tensor, kind: str = "dice_ce") -> torch.Tensor:
    """Symmetric CPS term: a learns from b's pseudo-labels and b from a's."""
    return supervised_loss(logits_a, pseudo_labels(logits_b), kind=kind) + supervised_loss(
        logits_b, pseudo_labels(logits_a), kind=kind
    )


def cps_weight(epoch: float, max_weight: float, rampup_epochs: float) -> float:
    """Sigmoid-shaped ramp-up exp(−5(1−t)²), t = epoch / rampup (Laine & Aila), then constant."""
    if rampup_epochs <= 0:
        return max_weight
    t = min(1.0, max(0.0, epoch / rampup_epochs))
    return max_weight * math.exp(-5.0 * (1.0 - t) ** 2)


def cutmix_boxes(shape: tuple[int, ...], share: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    """One box per row, bool [B, Z, Y, X]: a volume share drawn uniformly from `share`, the same
    side fraction on every axis (share ** 1/3), at a uniformly drawn position inside the patch."""
    rows, spatial = shape[0], shape[1:]
    boxes = torch.zeros(shape, dtype=torch.bool)
    for r in range(rows):
        lo, hi = share
        side = (lo + (hi - lo) * float(torch.rand((), generator=gen))) ** (1 / 3)
        sl = [slice(None)] * len(spatial)
        for ax, n in enumerate(spatial):
            w = max(1, round(n * side))
            start = int(torch.randint(0, n - w + 1, (), generator=gen))
            sl[ax] = slice(start, start + w)
        boxes[(r, *sl)] = True
    return boxes


def cutmix_rows(x: torch.Tensor, labels: list[torch.Tensor], boxes: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Row r keeps itself outside its box and takes row r+1's content (cyclically) inside it;
    every label map in `labels` is mixed by the same boxes."""
    inside = boxes.to(x.device)
    mixed_x = torch.where(inside.unsqueeze(1), x.roll(-1, dims=0), x)
    return mixed_x, [torch.where(inside, lab.roll(-1, dims=0), lab) for lab in labels]


class CPSStep:
    """Two networks, each supervised on the labeled rows and taught by the other's pseudo-labels
    on every row (labeled and unlabeled, as CSSN); the unlabeled pool is UIF's when enabled."""

    networks = 2
    uses_unlabeled = True

    def __init__(self, loss_kind: str, cps_cfg: Any, uif_cfg: Any) -> None:
        self.loss_kind, self.cfg, self.uif_cfg = loss_kind, cps_cfg, uif_cfg
        self.uif = uif.new_state()
        self.weight = 0.0  # the ramped-up CPS weight of the latest step
        self.pool_size = 0
        self.seed, self.rank = 0, 0  # CutMix boxes: derive_seed(seed, "cutmix", rank, global step)

    def uses_uif(self, run: RunContext) -> bool:
        return self.uif_cfg.enabled and bool(run.unlabeled_ids)

    def describe(self, run: RunContext) -> str:
        return ("CPS+UIF" if self.uses_uif(run) else "CPS") + ("+CutMix" if self.cfg.cutmix else "")

    def restore(self, state: dict[str, Any], tensors: dict[str, torch.Tensor] | None, nets: list[nn.Module]) -> None:
        self.uif = state.get("uif") or uif.new_state()

    def begin_epoch(self, run: RunContext, epoch: int, nets: list[nn.Module]) -> EpochPlan:
        self.seed, self.rank = run.cfg.seed, run.ctx.rank
        use_uif = self.uses_uif(run)
        if use_uif and epoch > 0 and epoch % self.uif_cfg.refresh_every == 0 and self.uif.get("last_refresh") != epoch:
            uif.refresh(epoch, nets, run, run.unlabeled_ids, self.uif)
        pool = self.uif["pool"] if use_uif and self.uif["pool"] is not None else run.unlabeled_ids
        self.pool_size = len(pool)
        return EpochPlan(None, pool)

    def loss(self, model: nn.Module, batch: Batch, at: StepAt, policy: AmpPolicy) -> StepOutput:
        self.weight = cps_weight(at.epoch + at.step / at.iters, self.cfg.weight, self.cfg.rampup_epochs)
        n = batch.target.shape[0]
        if not self.cfg.cutmix or batch.x.shape[0] - n < 2:
            outs, sup = forward_supervised(model, batch, self.loss_kind, policy)
            cps = cps_loss(main_output(outs[0]), main_output(outs[1]), kind=self.loss_kind)
            return StepOutput(sup + self.weight * cps, sup, {"cps": float(cps.detach())})
        # CutMix: the pseudo-labels of the unmixed unlabeled patches, mixed like the input
        with torch.no_grad(), policy.autocast():
            teach = [pseudo_labels(main_output(o)) for o in model(batch.x[n:], batch.mask[n:])]
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "cutmix", self.rank, at.global_step))
        boxes = cutmix_boxes(tuple(teach[0].shape), self.cfg.cutmix_share, gen)
        mixed_x, mixed_pl = cutmix_rows(batch.x[n:], teach, boxes)
        mask = batch.mask.clone()
        if mask.shape[1] == mixed_x.shape[1]:  # modality dropout: a mixed row has what both rows had
            mask[n:] = mask[n:] * mask[n:].roll(-1, dims=0)
            mixed_x = mixed_x * mask[n:, :, None, None, None].to(mixed_x.dtype)
        mixed = Batch(torch.cat([batch.x[:n], mixed_x]), mask, batch.target, batch.case_ids)
        outs, sup = forward_supervised(model, mixed, self.loss_kind, policy)
        a, b = main_output(outs[0]), main_output(outs[1])
        # labeled rows: each other's argmax of this forward; mixed rows: the mixed pseudo-labels
        for_a = torch.cat([pseudo_labels(b[:n]), mixed_pl[1]])
        for_b = torch.cat([pseudo_labels(a[:n]), mixed_pl[0]])
        cps = supervised_loss(a, for_a, kind=self.loss_kind) + supervised_loss(b, for_b, kind=self.loss_kind)
        return StepOutput(sup + self.weight * cps, sup, {"cps": float(cps.detach())})

    def after_step(self, nets: list[nn.Module], at: StepAt) -> None:
        return None

    def end_epoch(self, run: RunContext, epoch: int, nets: list[nn.Module], parts: dict[str, float]) -> dict[str, Any]:
        return {"cps": parts.get("cps", 0.0), "cps_weight": self.weight, "unlabeled_pool": self.pool_size,
                "unlabeled_total": len(run.unlabeled_ids)}

    def state(self) -> dict[str, Any]:
        return {"uif": self.uif}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}
