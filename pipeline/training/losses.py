"""Segmentation losses: soft Dice + cross-entropy (default) or Dice + focal, masked for missing labels.

Targets are integer label maps; voxels equal to IGNORE and whole samples without labels
(`has_label` False) contribute nothing. Deep supervision: a list of logits [full, ½, ¼, ...]
is scored against nearest-downsampled targets with nnU-Net's weights (`ds_weights`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

IGNORE = 255


def _one_hot(target: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    valid = target != IGNORE
    onehot = F.one_hot(torch.where(valid, target, 0).long(), num_classes).movedim(-1, 1)
    return onehot.to(torch.float32), valid.unsqueeze(1)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, include_background: bool = False,
                   smooth: float = 1e-5, batch_dice: bool = False) -> torch.Tensor:
    """1 − mean soft Dice over classes (per sample unless `batch_dice`); absent-and-not-predicted → Dice 1."""
    k = logits.shape[1]
    probs = torch.softmax(logits.float(), 1)
    onehot, valid = _one_hot(target, k)
    probs = probs * valid
    dims = (0, 2, 3, 4) if batch_dice else (2, 3, 4)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + smooth) / (denom + smooth)
    if not include_background:
        dice = dice[..., 1:]
    return 1 - dice.mean()


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    ce = F.cross_entropy(logits.float(), target.long(), ignore_index=IGNORE, reduction="sum")
    return ce / (target != IGNORE).sum().clamp(min=1)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Multi-class focal loss, mean over valid voxels (CSSN's variant was a scaled BCE on sigmoid channels)."""
    logp = torch.log_softmax(logits.float(), 1)
    valid = target != IGNORE
    t = torch.where(valid, target, 0).long().unsqueeze(1)
    logp_t = logp.gather(1, t).squeeze(1)
    loss = -((1 - logp_t.exp()) ** gamma) * logp_t
    return (loss * valid).sum() / valid.sum().clamp(min=1)


def seg_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "dice_ce") -> torch.Tensor:
    dice = soft_dice_loss(logits, target)
    if kind == "dice_ce":
        return dice + cross_entropy(logits, target)
    if kind == "dice_focal":
        return dice + focal_loss(logits, target)
    raise ValueError(f"unknown loss {kind!r} (dice_ce, dice_focal)")


def downsample_target(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(target.shape[-3:]) == tuple(size):
        return target
    return F.interpolate(target[:, None].float(), size=tuple(size), mode="nearest")[:, 0].to(target.dtype)


def ds_weights(n: int) -> list[float]:
    """nnU-Net's deep-supervision weights for outputs [full, ½, ¼, ...]: 1/2^i, the lowest-resolution
    output's set to 0, normalised to sum 1 (n = 4 → 4/7, 2/7, 1/7, 0).

    Our nets' outputs match nnU-Net's (full resolution and every decoder level above the bottleneck,
    nn.blocks.with_deep_supervision), and the lowest one exists only for deep supervision: its nearest-
    downsampled target (1/4 of a 32×64×64 patch with 4 levels) has lost the small organs, so nnU-Net
    leaves it out. A single output keeps weight 1.
    """
    w = [0.5**i for i in range(n)]
    if n > 1:
        w[-1] = 0.0
    return [x / sum(w) for x in w]


def supervised_loss(outputs: torch.Tensor | list[torch.Tensor], target: torch.Tensor,
                    has_label: torch.Tensor | None = None, kind: str = "dice_ce") -> torch.Tensor:
    """Loss over the samples that have labels; zero (still attached to the graph) if none do."""
    outs = outputs if isinstance(outputs, list) else [outputs]
    if has_label is not None:
        if not bool(has_label.any()):
            return sum(o.sum() for o in outs) * 0.0
        if not bool(has_label.all()):
            outs = [o[has_label] for o in outs]
            target = target[has_label]
    total = outs[0].new_zeros((), dtype=torch.float32)
    for w, out in zip(ds_weights(len(outs)), outs, strict=True):
        if w == 0:
            # not scored, but kept in the graph: DDP (find_unused_parameters off) needs a gradient,
            # zero here, for every head's parameters
            total = total + out.sum() * 0.0
        else:
            total = total + w * seg_loss(out, downsample_target(target, out.shape[2:]), kind)
    return total
