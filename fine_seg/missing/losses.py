"""Auxiliary losses of the missing-modality methods; all respect the availability mask, so a
zero-filled (missing) modality never contributes (the ShaSpec seed aligned and classified all
four, zeroed ones included)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F


def _zero(like: torch.Tensor) -> torch.Tensor:
    return like.sum() * 0.0  # attached to the graph, so backward() works when nothing applies


def alignment_loss(shared: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ShaSpec distribution alignment: mean L1 between the shared features of every pair of
    modalities that are both present in a sample. shared [B,N,C,...], mask [B,N] bool."""
    n = shared.shape[1]
    terms = []
    for i in range(n):
        for j in range(i + 1, n):
            rows = mask[:, i] & mask[:, j]
            if bool(rows.any()):
                terms.append((shared[rows, i] - shared[rows, j]).abs().mean())
    return torch.stack(terms).mean() if terms else _zero(shared)


def modality_classification_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ShaSpec domain classification: CE of the modality id from each present modality's
    pooled specific feature. logits [B,N,N] (sample, modality slot, class)."""
    n = logits.shape[1]
    target = torch.arange(n, device=logits.device).expand(logits.shape[0], n)
    sel = mask.bool()
    if not bool(sel.any()):
        return _zero(logits)
    return F.cross_entropy(logits[sel].float(), target[sel])


def feature_distillation_loss(shared: torch.Tensor, mask: torch.Tensor, teachers: Iterable[int]) -> torch.Tensor:
    """LCKD: Σ over teachers t and other present modalities s of L1(f_t.detach(), f_s), each
    averaged over the samples where both are present."""
    n = shared.shape[1]
    total = _zero(shared)
    for t in sorted(set(int(v) for v in teachers)):
        for s in range(n):
            if s == t:
                continue
            rows = mask[:, t] & mask[:, s]
            if bool(rows.any()):
                total = total + (shared[rows, t].detach() - shared[rows, s]).abs().mean()
    return total


def kl_distillation(teacher: torch.Tensor, student: torch.Tensor, temperature: float = 4.0,
                    floor: float = 0.005) -> torch.Tensor:
    """PASSION pixel-wise term per sample: T²·KL(p_t ‖ p_s) on softmax(logits/T), probabilities
    clamped at `floor`, summed over classes and averaged over voxels. Returns [B]."""
    pt = torch.softmax(teacher.detach().float() / temperature, 1).clamp(min=floor)
    ps = torch.softmax(student.float() / temperature, 1).clamp(min=floor)
    kl = (pt * (pt.log() - ps.log())).sum(1)
    return temperature ** 2 * kl.flatten(1).mean(1)


def prototype_loss(teacher_feat: torch.Tensor, student_feat: torch.Tensor, target: torch.Tensor,
                   num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PASSION semantic-wise term per sample: class prototypes are the GT-masked means of the
    (detached) teacher features; the cosine-similarity maps of teacher and student features to
    each prototype are compared by MSE. Classes absent from a sample are skipped.
    Returns (mse [B], dist [B] = mean |Δ|)."""
    t = teacher_feat.detach().float()
    s = student_feat.float()
    if target.shape[-3:] != t.shape[-3:]:
        target = F.interpolate(target[:, None].float(), size=t.shape[-3:], mode="nearest")[:, 0].long()
    mse, dist = [], []
    for b in range(t.shape[0]):
        tb, sb, gb = t[b].flatten(1), s[b].flatten(1), target[b].flatten()
        protos = []
        for k in range(num_classes):
            sel = gb == k
            if bool(sel.any()):
                protos.append(tb[:, sel].mean(1))
        if not protos:
            mse.append(_zero(sb))
            dist.append(sb.new_zeros(()))
            continue
        p = F.normalize(torch.stack(protos), dim=1)  # [K', C]
        sim_t = p @ F.normalize(tb, dim=0)  # [K', V]
        sim_s = p @ F.normalize(sb, dim=0)
        mse.append(((sim_s - sim_t) ** 2).mean())
        dist.append((sim_s - sim_t).abs().mean().detach())
    return torch.stack(mse), torch.stack(dist)
