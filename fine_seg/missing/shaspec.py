"""ShaSpec (Wang et al., CVPR 2023): shared + specific encoders, composition fusion, mean
substitution of missing modalities, distribution-alignment (L1, 0.1) and modality-classification
(CE, 0.02) auxiliary losses, full-modality warm-up then random non-empty subsets."""

from __future__ import annotations

from typing import Any

import torch

from fine_seg.missing.losses import alignment_loss, modality_classification_loss
from fine_seg.missing.method import Forward, MissingMethod, StepOutput


class ShaSpec(MissingMethod):
    name = "shaspec"

    def step(self, forward: Forward, x: torch.Tensor, available: torch.Tensor, target: torch.Tensor, *,
             global_step: int, total_steps: int, epoch: int, step: int) -> StepOutput:
        mask = self.masks(available, global_step, total_steps)
        out: dict[str, Any] = forward(x, mask)
        sup = self.supervised(out["logits"], target)
        align = alignment_loss(out["shared"], mask)
        cls = modality_classification_loss(out["modality_logits"], mask)
        loss = sup + self.s.align_weight * align + self.s.cls_weight * cls
        return StepOutput(loss, sup, {"align": float(align.detach()), "cls": float(cls.detach())})
