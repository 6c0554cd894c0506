"""Cross pseudo supervision (Chen et al., CVPR 2021), as CSSN uses it, with CSSN's label bug fixed.

Each network learns from the other's detached argmax pseudo-labels over the softmax classes
*including background* (CSSN took the argmax over 13 organ channels, one-hot encoded it with 14
classes and dropped column 0: the pseudo-labels were shifted by one class, liver vanished and
there was no background).
"""

from __future__ import annotations

import math

import torch

from pipeline.training.losses import supervised_loss


def main_output(out: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    return out[0] if isinstance(out, list) else out


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
