"""Residual 3D U-Net for the coarse sample (CSSN: channels 16–256, 4 downsamplings).

Unlike CSSN (13 sigmoid channels, no background) the head is a K-class softmax with an explicit
background class, so pseudo-labels and argmax predictions are well defined.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.nn import (
    ResBlock,
    deep_supervision_heads,
    encoder_stages,
    init_weights,
    merged_config,
    resolve_strides,
    upsample_to,
    with_deep_supervision,
)

DEFAULTS: dict[str, Any] = {
    "in_channels": 1,
    "num_classes": 14,
    "channels": [16, 32, 64, 128, 256],
    "blocks": 1,  # residual blocks per encoder stage (after the stride-2 one)
    "strides": None,  # per downsampling [z, y, x]; None → 2 everywhere
    "norm": "instance",
    "act": "leaky_relu",
    "dropout": 0.0,
    "deep_supervision": False,
}


def default_model_config(**overrides: Any) -> dict[str, Any]:
    return merged_config(DEFAULTS, overrides, "coarse")


class CoarseUNet(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = default_model_config(**cfg)
        c = list(self.cfg["channels"])
        norm, act, drop = self.cfg["norm"], self.cfg["act"], float(self.cfg["dropout"])
        strides = resolve_strides(self.cfg["strides"], len(c), "coarse")
        kw = {"norm": norm, "act": act}
        self.stem = ResBlock(self.cfg["in_channels"], c[0], **kw)
        # `blocks` counts the residual blocks after each stage's strided one
        self.down = encoder_stages(c, strides, int(self.cfg["blocks"]) + 1, dropout=drop, **kw)
        # decoder level i (from deep to shallow) merges c[i+1] (upsampled) with skip c[i]
        self.up = nn.ModuleList(ResBlock(c[i + 1] + c[i], c[i], **kw) for i in reversed(range(len(c) - 1)))
        k = int(self.cfg["num_classes"])
        self.head = nn.Conv3d(c[0], k, 1)
        self.ds_heads = deep_supervision_heads(c, k, self.cfg["deep_supervision"])
        init_weights(self)

    def forward(self, x: torch.Tensor, modality_mask: torch.Tensor | None = None) -> torch.Tensor | list[torch.Tensor]:
        if modality_mask is not None:
            x = x * modality_mask.to(x.dtype)[:, :, None, None, None]
        skips = [self.stem(x)]
        for stage in self.down:
            skips.append(stage(skips[-1]))
        y = skips.pop()
        decoded: list[torch.Tensor] = []
        for block in self.up:
            skip = skips.pop()
            y = block(torch.cat([upsample_to(y, skip), skip], 1))
            decoded.append(y)
        out = self.head(y)
        if self.training and len(self.ds_heads):
            return with_deep_supervision(out, decoded, self.ds_heads)
        return out


def build_model(cfg: dict[str, Any]) -> CoarseUNet:
    """The single constructor used by training, export and inference."""
    return CoarseUNet(cfg)
