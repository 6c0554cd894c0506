"""LCKD (Wang et al., MICCAI 2023): shared encoder with mean substitution, no specific encoders;
periodically elect per region (ET/TC/WT) the single modality with the best validation Dice as a
teacher and distil its bottleneck features into the other present modalities (L1, 0.1)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from evaluation.surface import dice, label_mask
from fine_seg.missing.losses import feature_distillation_loss
from fine_seg.missing.method import Forward, MissingMethod, StepOutput
from pipeline.log import get_logger
from pipeline.tasks import BRATS_REGIONS_2023

log = get_logger("train.lckd")




@torch.inference_mode()
def single_modality_scores(net: torch.nn.Module, samples: list[Any], device: torch.device, n: int,
                           regions: dict[str, tuple[int, ...]] = BRATS_REGIONS_2023) -> dict[int, dict[str, float]]:
    """Mean region Dice of `net` fed one modality at a time, over the samples that have it."""
    was_training = net.training
    net.eval()
    sums: dict[int, dict[str, list[float]]] = {m: {r: [] for r in regions} for m in range(n)}
    for s in samples:
        x = torch.from_numpy(np.array(s.image, dtype=np.float32))[None].to(device)
        gt = torch.from_numpy(np.array(s.label, dtype=np.uint8)).to(device)
        for m in range(n):
            if not bool(np.asarray(s.modality_mask)[m]):
                continue
            mask = torch.zeros(1, n, dtype=torch.bool, device=device)
            mask[0, m] = True
            out = net(x, mask)
            pred = (out[0] if isinstance(out, list) else out).argmax(1)[0]
            for r, labels in regions.items():
                sums[m][r].append(dice(label_mask(gt, labels), label_mask(pred, labels), empty=1.0))
    net.train(was_training)
    return {m: {r: float(np.mean(v)) for r, v in d.items() if v} for m, d in sums.items() if any(d.values())}


def elect_teachers(scores: dict[int, dict[str, float]], fallback: list[int]) -> tuple[list[int], dict[str, int]]:
    """Per region the best single modality (ties: the lower index); the teachers are their union."""
    per_region: dict[str, int] = {}
    regions = sorted({r for d in scores.values() for r in d})
    for r in regions:
        cands = [(d[r], -m) for m, d in scores.items() if r in d]
        if cands:
            per_region[r] = -max(cands)[1]
    teachers = sorted(set(per_region.values())) or list(fallback)
    return teachers, per_region


class LCKD(MissingMethod):
    name = "lckd"
    keep_all_missing = 1

    def __init__(self, settings: Any, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self.teachers = [self.modalities.index(settings.initial_teacher)]
        self.elected: dict[str, int] = {}

    def step(self, forward: Forward, x: torch.Tensor, available: torch.Tensor, target: torch.Tensor, *,
             global_step: int, total_steps: int, epoch: int, step: int) -> StepOutput:
        mask = self.masks(available, global_step, total_steps)
        out: dict[str, Any] = forward(x, mask)
        sup = self.supervised(out["logits"], target)
        kd = feature_distillation_loss(out["shared"], mask, self.teachers)
        return StepOutput(sup + self.s.distill_weight * kd, sup, {"kd": float(kd.detach())})

    def epoch_end(self, net: torch.nn.Module, epoch: int, source: Any, val_ids: list[str],
                  device: torch.device) -> dict[str, Any]:
        if (epoch + 1) % self.s.elect_every != 0:
            return {}
        if not val_ids:
            log.warning("lckd: no validation cases; keeping teachers %s", self.teacher_names())
            return {}
        samples = [source.load(cid, "fine") for cid in val_ids]
        scores = single_modality_scores(net, samples, device, len(self.modalities))
        self.teachers, self.elected = elect_teachers(scores, self.teachers)
        log.info("lckd epoch %d: teachers %s (%s)", epoch + 1, self.teacher_names(),
                 ", ".join(f"{r}: {self.modalities[m]} {scores[m][r]:.3f}" for r, m in self.elected.items()))
        return {"teachers": self.teacher_names()}

    def teacher_names(self) -> list[str]:
        return [self.modalities[m] for m in self.teachers]

    def state_dict(self) -> dict[str, Any]:
        return {"teachers": list(self.teachers), "elected": dict(self.elected)}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.teachers = [int(v) for v in state.get("teachers", self.teachers)]
            self.elected = {str(k): int(v) for k, v in state.get("elected", {}).items()}
