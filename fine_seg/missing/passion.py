"""PASSION (ACM MM 2024): self-distillation under imbalanced missing rates.

Each step runs, in one batched forward, the full available-modality path of every case (the
teacher, detached for distillation) and every single-modality path (the students) through the
same shared fusion and decoder. Students learn from the teacher by pixel-wise KL at temperature
T on every deep-supervision output and by the prototype-similarity (semantic) loss.

Relative preference (as the authors' train.py): from the current batch, per case with students,
rp_m = dist_m / mean(dist) − 1 over its modalities (dist: the prototype discrepancy), summed
over the batch's cases. Task-wise regularisation applies the student's segmentation ("sep")
and prototype losses only to under-aligned modalities (rp_m > 0); gradient-wise regularisation
weights each modality's KL by β_m × its modal weight, β updated once per epoch from the epoch's
mean discrepancies: β ← β − η·(mean − dist_m)/mean, clamped to [β_min, β_max] and renormalised
to ‖β‖₂ = β_norm (under-aligned modalities get more distillation). η grows ×`eta_growth` every
`eta_growth_every` epochs. Modal weights: inverse modality frequency of the samples seen (mean 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fine_seg.missing.losses import kl_distillation, prototype_loss
from fine_seg.missing.method import Forward, MissingMethod, StepOutput
from pipeline.training.losses import ds_weights


def update_beta(beta: Sequence[float], dist: Sequence[float | None], eta: float, *, lo: float = 0.1,
                hi: float = 4.0, norm: float = 2.0, sign: float = 1.0) -> list[float]:
    """One epoch's β update; modalities without observations (dist None) keep their β before the
    renormalisation. sign=+1: PASSION (β_m grows when dist_m > mean); sign=−1: the reversed
    convention of the HGA seed code."""
    b = np.asarray(beta, dtype=np.float64)
    seen = [i for i, d in enumerate(dist) if d is not None]
    if seen:
        mean = float(np.mean([dist[i] for i in seen]))
        if mean > 0:
            for i in seen:
                b[i] = b[i] - sign * eta * (mean - float(dist[i])) / mean  # type: ignore[arg-type]
    b = np.clip(b, lo, hi)
    n = float(np.linalg.norm(b))
    if n > 0:
        b = b * (norm / n)
    return [float(v) for v in b]


def relative_preference(dist: Sequence[float | None]) -> list[float]:
    seen = [d for d in dist if d is not None]
    if not seen or float(np.mean(seen)) <= 0:
        return [0.0] * len(dist)
    mean = float(np.mean(seen))
    return [0.0 if d is None else float(d) / mean - 1.0 for d in dist]


class Passion(MissingMethod):
    name = "passion"
    sep_masked = True  # PASSION: the student segmentation loss only for under-aligned modalities

    def __init__(self, settings: Any, **kw: Any) -> None:
        super().__init__(settings, **kw)
        n = len(self.modalities)
        self.beta = [float(settings.beta_norm) / np.sqrt(n)] * n
        self.eta = float(settings.eta)
        self.epoch_dist: list[list[float]] = [[] for _ in range(n)]
        self.seen = np.zeros(n, dtype=np.int64)  # samples per available modality (inverse-frequency weights)

    def modal_weights(self) -> np.ndarray:
        inv = 1.0 / np.maximum(self.seen, 1)
        return inv / inv[self.seen > 0].mean() if (self.seen > 0).any() else np.ones_like(inv)

    def step_masks(self, available: torch.Tensor, global_step: int, total_steps: int) -> torch.Tensor:
        return available.bool()  # each case trains with its fixed available modalities (`idt`)

    def _students(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Per modality the rows that get a single-modality student path, and the batched input
        (teachers first, then the students of each modality in order) with its masks."""
        n = mask.shape[1]
        multi = mask.sum(1) > 1  # a single-modality case is its own student: nothing to distil
        rows = [torch.nonzero(mask[:, m] & multi, as_tuple=False).flatten() for m in range(n)]
        xs, ms = [x], [mask]
        for m, r in enumerate(rows):
            if r.numel():
                xs.append(x[r])
                one = torch.zeros(r.numel(), n, dtype=torch.bool, device=mask.device)
                one[:, m] = True
                ms.append(one)
        return rows, torch.cat(xs), torch.cat(ms)

    def step(self, forward: Forward, x: torch.Tensor, available: torch.Tensor, target: torch.Tensor, *,
             global_step: int, total_steps: int, epoch: int, step: int) -> StepOutput:
        mask = self.step_masks(available, global_step, total_steps)
        b, n = mask.shape
        self.seen += mask.sum(0).cpu().numpy()
        rows, xs, ms = self._students(x, mask)
        out = forward(xs, ms)
        logits = out["logits"] if isinstance(out["logits"], list) else [out["logits"]]
        feats = out["features"]
        fuse = self.supervised([lg[:b] for lg in logits], target)
        dws = ds_weights(len(logits))
        terms: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # m → (kl, sep, proto)
        dist: list[list[float | None]] = [[None] * n for _ in range(b)]  # per case and student modality
        start = b
        for m, r in enumerate(rows):
            k = r.numel()
            if not k:
                continue
            s_log = [lg[start:start + k] for lg in logits]
            t_log = [lg[:b][r] for lg in logits]
            kl_m = sum(dw * kl_distillation(t, s, self.s.temperature).mean() for dw, t, s in zip(dws, t_log, s_log, strict=True))
            mse, d = prototype_loss(feats[:b][r], feats[start:start + k], target[r], self.num_classes)
            for i, v in zip(r.tolist(), d.tolist(), strict=True):
                dist[i][m] = v
            self.epoch_dist[m].append(float(d.mean()))
            terms[m] = (kl_m, self.supervised(s_log, target[r]), mse.mean())
            start += k
        under = self.under_aligned(dist)
        w = self.modal_weights()
        sep, kl, proto = fuse.new_zeros(()), fuse.new_zeros(()), fuse.new_zeros(())
        for m, (kl_m, sep_m, proto_m) in terms.items():
            if under[m] or not self.sep_masked:
                sep = sep + float(w[m]) * sep_m
            if under[m]:
                proto = proto + float(w[m]) * proto_m
            kl = kl + self.beta[m] * float(w[m]) * kl_m
        loss = fuse + sep + self.s.kl_weight * kl + self.s.proto_weight * proto
        return StepOutput(loss, fuse, {"sep": float(sep.detach()), "kl": float(kl.detach()),
                                       "proto": float(proto.detach())})

    @staticmethod
    def under_aligned(dist: list[list[float | None]]) -> list[bool]:
        """PASSION's task-wise gate from the current batch: the relative preferences of each case's
        student modalities (`relative_preference`; None: no student), summed over the cases;
        under-aligned where the sum is positive."""
        rp = np.zeros(len(dist[0]) if dist else 0)
        for case in dist:
            rp += relative_preference(case)
        return [bool(v > 0) for v in rp]

    def epoch_end(self, net: torch.nn.Module, epoch: int, source: Any, val_ids: list[str],
                  device: torch.device) -> dict[str, Any]:
        dist = [float(np.mean(d)) if d else None for d in self.epoch_dist]
        self.beta = update_beta(self.beta, dist, self.eta, lo=self.s.beta_min, hi=self.s.beta_max,
                                norm=self.s.beta_norm, sign=self.beta_sign())
        if (epoch + 1) % self.s.eta_growth_every == 0:
            self.eta *= self.s.eta_growth
        self.epoch_dist = [[] for _ in self.modalities]
        return {"beta": [round(v, 4) for v in self.beta], "dist": dist}

    def beta_sign(self) -> float:
        return 1.0

    def state_dict(self) -> dict[str, Any]:
        return {"beta": list(self.beta), "eta": self.eta, "seen": self.seen.tolist()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.beta = [float(v) for v in state["beta"]]
            self.eta = float(state["eta"])
            self.seen = np.asarray(state["seen"], dtype=np.int64)
