"""The single constructor of fine networks, used by training, export and inference: the plain
`EfficientSegNet`, or the multi-encoder network of a missing-modality method when the model
config names one. It sits above both (fine_seg.model ← fine_seg.missing.net ← here), so neither
imports the other's package."""

from __future__ import annotations

from typing import Any

from torch import nn

from fine_seg.missing.net import MultiEncoderNet
from fine_seg.model import EfficientSegNet


def build_model(cfg: dict[str, Any]) -> nn.Module:
    if cfg.get("method", "plain") != "plain":  # missing-modality methods (fine_seg/missing/)
        return MultiEncoderNet(cfg)
    return EfficientSegNet({k: v for k, v in cfg.items() if k != "method"})
