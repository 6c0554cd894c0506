"""EfficientSegNet-style fine network: residual encoder, strip-pooling context, anisotropic decoder.

Interface: `forward(x [B,N,Z,Y,X], modality_mask [B,N] bool) -> logits [B,K,Z,Y,X]` (a list
[full, ½, ¼, ...] in training mode when deep supervision is on). Missing channels are zeroed
inside the model, so callers cannot forget. The network is split into `encode` → `fuse` →
`decode`; missing-modality methods (ShaSpec, LCKD, PASSION, HGA) replace `encode` with
per-modality encoders and `fuse` with feature substitution while keeping the decoder.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.nn import (
    AnisoBlock,
    ConvNormAct,
    ResBlock,
    StripPoolContext,
    deep_supervision_heads,
    encoder_stages,
    init_weights,
    merged_config,
    resolve_strides,
    upsample_to,
    with_deep_supervision,
)

DEFAULTS: dict[str, Any] = {
    "in_channels": 1,  # N modalities
    "num_classes": 14,
    "channels": [16, 32, 64, 128, 256],
    "blocks": 2,  # residual blocks per encoder stage (the first one strides)
    "strides": None,  # per downsampling [z, y, x]; None → 2 everywhere
    "norm": "instance",
    "act": "leaky_relu",
    "dropout": 0.0,
    "context": True,  # strip-pooling context block at the bottleneck
    "context_reduction": 4,
    "decoder_blocks": 1,  # anisotropic blocks per decoder level
    "deep_supervision": False,
    "mask_channels": False,  # append the availability mask as N constant input channels
}


def default_model_config(**overrides: Any) -> dict[str, Any]:
    return merged_config(DEFAULTS, overrides, "fine")


class EfficientSegNet(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = default_model_config(**cfg)
        c = list(self.cfg["channels"])
        n = int(self.cfg["in_channels"])
        kw = {"norm": self.cfg["norm"], "act": self.cfg["act"]}
        drop = float(self.cfg["dropout"])
        strides = resolve_strides(self.cfg["strides"], len(c), "fine")
        self.num_modalities = n
        cin = 2 * n if self.cfg["mask_channels"] else n
        blocks = max(1, int(self.cfg["blocks"]))
        self.stem = nn.Sequential(ConvNormAct(cin, c[0], 3, **kw), ResBlock(c[0], c[0], dropout=drop, **kw))
        self.encoder = encoder_stages(c, strides, blocks, dropout=drop, **kw)
        self.context = (
            StripPoolContext(c[-1], reduction=int(self.cfg["context_reduction"]), **kw)
            if self.cfg["context"] else nn.Identity()
        )
        # decoder level for skip i: 1×1×1 "trans" conv c[i+1]→c[i], upsample, add skip, anisotropic blocks
        self.trans = nn.ModuleList(ConvNormAct(c[i + 1], c[i], 1, **kw) for i in reversed(range(len(c) - 1)))
        self.dec = nn.ModuleList(
            nn.Sequential(*[AnisoBlock(c[i], **kw) for _ in range(max(1, int(self.cfg["decoder_blocks"])))])
            for i in reversed(range(len(c) - 1))
        )
        k = int(self.cfg["num_classes"])
        self.head = nn.Conv3d(c[0], k, 1)
        self.ds_heads = deep_supervision_heads(c, k, self.cfg["deep_supervision"])
        init_weights(self)

    # -- the three separable parts -------------------------------------------------------
    def prepare_input(self, x: torch.Tensor, modality_mask: torch.Tensor | None) -> torch.Tensor:
        if x.shape[1] != self.num_modalities:
            raise ValueError(f"fine model expects {self.num_modalities} modality channels, got {x.shape[1]}")
        if modality_mask is None:
            modality_mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        m = modality_mask.to(device=x.device, dtype=x.dtype)[:, :, None, None, None]
        x = x * m
        if self.cfg["mask_channels"]:
            x = torch.cat([x, m.expand_as(x)], 1)
        return x

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features from full resolution to the bottleneck."""
        feats = [self.stem(x)]
        for stage in self.encoder:
            feats.append(stage(feats[-1]))
        return feats

    def fuse(self, feats: list[torch.Tensor], modality_mask: torch.Tensor | None) -> list[torch.Tensor]:
        """Hook for multi-encoder fusion / feature substitution; identity for the shared-encoder model."""
        return [*feats[:-1], self.context(feats[-1])]

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        return self.decode_with_features(feats)[0]

    def decode_with_features(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor]:
        """Logits (a list with deep supervision while training) and the full-resolution decoder
        features, which the missing-modality methods' prototype losses need."""
        skips = list(feats)
        y = skips.pop()
        decoded: list[torch.Tensor] = []
        for trans, dec in zip(self.trans, self.dec, strict=True):
            skip = skips.pop()
            y = dec(upsample_to(trans(y), skip) + skip)
            decoded.append(y)
        out = self.head(y)
        if self.training and len(self.ds_heads):
            return with_deep_supervision(out, decoded, self.ds_heads), y
        return out, y

    def forward(self, x: torch.Tensor, modality_mask: torch.Tensor | None = None) -> torch.Tensor | list[torch.Tensor]:
        return self.decode(self.fuse(self.encode(self.prepare_input(x, modality_mask)), modality_mask))

