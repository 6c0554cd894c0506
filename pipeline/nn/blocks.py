"""3D blocks: conv-norm-act, residual, anisotropic (3×3×1 then 1×1×3) and strip-pooling context.

Rule kept throughout: tensors produced by pooling are never normalised. InstanceNorm/BatchNorm
on a 1×1×1 (or 1-voxel-thick) pooled tensor has one value per channel and breaks at batch size 1
(the ShaSpec ASPP bug); convolutions on pooled tensors use a bias and no norm instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Triple = int | Sequence[int]


def _triple(v: Triple) -> tuple[int, int, int]:
    if isinstance(v, int):
        return (v, v, v)
    t = tuple(int(x) for x in v)
    if len(t) != 3:
        raise ValueError(f"expected 3 values (z, y, x), got {v!r}")
    return t  # type: ignore[return-value]


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"unknown norm {kind!r} (instance, batch, group)")


def make_act(kind: str) -> nn.Module:
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "leaky_relu":
        return nn.LeakyReLU(0.01, inplace=True)
    if kind == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {kind!r} (relu, leaky_relu, gelu)")


class ConvNormAct(nn.Sequential):
    """Bias-free conv → norm → optional activation; 'same' padding for odd kernels."""

    def __init__(self, cin: int, cout: int, kernel: Triple = 3, stride: Triple = 1, *,
                 norm: str = "instance", act: str | None = "leaky_relu") -> None:
        k, s = _triple(kernel), _triple(stride)
        layers: list[nn.Module] = [
            nn.Conv3d(cin, cout, k, s, padding=tuple(x // 2 for x in k), bias=False),
            make_norm(norm, cout),
        ]
        if act is not None:
            layers.append(make_act(act))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Two 3×3×3 conv-norm units with a residual shortcut (1×1×1 projection when shape changes)."""

    def __init__(self, cin: int, cout: int, stride: Triple = 1, *, norm: str = "instance",
                 act: str = "leaky_relu", dropout: float = 0.0) -> None:
        super().__init__()
        s = _triple(stride)
        self.conv1 = ConvNormAct(cin, cout, 3, s, norm=norm, act=act)
        self.drop = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = ConvNormAct(cout, cout, 3, 1, norm=norm, act=None)
        self.skip = nn.Identity() if cin == cout and s == (1, 1, 1) else ConvNormAct(cin, cout, 1, s, norm=norm, act=None)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.drop(self.conv1(x))) + self.skip(x))


class AnisoBlock(nn.Module):
    """Residual anisotropic unit: 3×3×1 conv then 1×1×3 conv (kernel axes follow the tensor's z, y, x).

    Factorising the 3³ kernel keeps the receptive field growth of the decoder at a third of the cost.
    """

    def __init__(self, channels: int, *, norm: str = "instance", act: str = "leaky_relu") -> None:
        super().__init__()
        self.conv1 = ConvNormAct(channels, channels, (3, 3, 1), norm=norm, act=act)
        self.conv2 = ConvNormAct(channels, channels, (1, 1, 3), norm=norm, act=None)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + x)


def upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Trilinear resize to `like`'s spatial size (handles odd sizes left by stride-2 convs)."""
    if x.shape[2:] == like.shape[2:]:
        return x
    return F.interpolate(x, size=like.shape[2:], mode="trilinear", align_corners=False)


class StripPoolContext(nn.Module):
    """Anisotropic context block at the bottleneck (EfficientSegNet's AnisotropicAvgPooling, redone).

    x0 = 1×1×1 reduction to C/r. Branch A: local 3³ conv plus average-pooled pyramid levels
    (÷2, ÷4, adaptive so any bottleneck size works). Branch B: strip pooling, i.e. averages over
    two whole axes leaving a z-, y- or x-strip, each followed by a 3-tap conv along its strip and
    broadcast back. Branches are concatenated, fused by 1×1×1, added to x0 and projected back to C;
    the output is added to the input (CSSN replaced the bottleneck instead, which throws away the
    encoder features when the block is badly initialised).
    """

    def __init__(self, channels: int, *, reduction: int = 4, norm: str = "instance", act: str = "leaky_relu") -> None:
        super().__init__()
        mid = max(channels // reduction, 4)
        self.reduce = ConvNormAct(channels, mid, 1, norm=norm, act=act)
        self.local = ConvNormAct(mid, mid, 3, norm=norm, act=None)
        self.pyramid = nn.ModuleList([nn.Conv3d(mid, mid, 3, padding=1, bias=True) for _ in (2, 4)])
        self.pyramid_out = ConvNormAct(mid, mid, 3, norm=norm, act=act)
        self.strips = nn.ModuleList([
            nn.Conv3d(mid, mid, (3, 1, 1), padding=(1, 0, 0), bias=True),
            nn.Conv3d(mid, mid, (1, 3, 1), padding=(0, 1, 0), bias=True),
            nn.Conv3d(mid, mid, (1, 1, 3), padding=(0, 0, 1), bias=True),
        ])
        self.strip_norm = make_norm(norm, mid)  # applied after broadcasting back: a full-size tensor
        self.act = make_act(act)
        self.fuse = ConvNormAct(2 * mid, mid, 1, norm=norm, act=None)
        self.out = nn.Sequential(ConvNormAct(mid, mid, 3, norm=norm, act=act), nn.Conv3d(mid, channels, 1, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.reduce(x)
        z, y, w = x0.shape[2:]
        a = self.local(x0)
        for factor, conv in zip((2, 4), self.pyramid, strict=True):
            pooled = F.adaptive_avg_pool3d(x0, (max(1, z // factor), max(1, y // factor), max(1, w // factor)))
            a = a + upsample_to(conv(pooled), x0)
        a = self.pyramid_out(self.act(a))
        b = x0.new_zeros(())
        for size, conv in zip(((z, 1, 1), (1, y, 1), (1, 1, w)), self.strips, strict=True):
            b = b + conv(F.adaptive_avg_pool3d(x0, size)).expand_as(x0)
        b = self.act(self.strip_norm(b))
        fused = self.act(self.fuse(torch.cat([a, b], 1)) + x0)
        return x + self.out(fused)


def resolve_strides(strides: list[Any] | None, levels: int, model: str) -> list[Any]:
    """Per-downsampling strides of a network with `levels` resolution levels (None → 2 everywhere)."""
    strides = list(strides) if strides else [2] * (levels - 1)
    if len(strides) != levels - 1:
        raise ValueError(f"{model} model: {levels - 1} downsamplings need {levels - 1} strides, got {len(strides)}")
    return strides


def encoder_stages(channels: list[int], strides: list[Any], blocks: int, *, dropout: float = 0.0,
                   norm: str = "instance", act: str = "leaky_relu") -> nn.ModuleList:
    """The downsampling stages of a residual encoder: stage i is a strided ResBlock
    channels[i-1] → channels[i] followed by `blocks - 1` ResBlocks at channels[i]."""
    kw = {"norm": norm, "act": act, "dropout": dropout}
    stages = nn.ModuleList()
    for i in range(1, len(channels)):
        layers = [ResBlock(channels[i - 1], channels[i], strides[i - 1], **kw)]
        layers += [ResBlock(channels[i], channels[i], **kw) for _ in range(blocks - 1)]
        stages.append(nn.Sequential(*layers))
    return stages


def deep_supervision_heads(channels: list[int], num_classes: int, enabled: bool) -> nn.ModuleList:
    """1×1×1 heads on decoder levels 1 … L-2 (½, ¼, … resolution); empty when disabled."""
    if not enabled:
        return nn.ModuleList()
    return nn.ModuleList(nn.Conv3d(channels[i], num_classes, 1) for i in range(1, len(channels) - 1))


def with_deep_supervision(out: torch.Tensor, decoded: list[torch.Tensor], heads: nn.ModuleList) -> list[torch.Tensor]:
    """[full-resolution logits, level-1 logits, level-2 logits, …]; `decoded` runs deep → shallow,
    so decoded[-2] is level 1 (½ resolution), decoded[-3] level 2 (¼), …"""
    return [out] + [head(decoded[-2 - i]) for i, head in enumerate(heads)]


def init_weights(module: nn.Module, negative_slope: float = 0.01) -> None:
    """Kaiming-normal convs, zero biases; norms at identity. Called once per network after building."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d | nn.ConvTranspose3d):
            nn.init.kaiming_normal_(m.weight, a=negative_slope)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def merged_config(defaults: dict[str, Any], overrides: dict[str, Any], model: str) -> dict[str, Any]:
    """`defaults` updated by `overrides`; an unknown key is an error, never silently ignored."""
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise ValueError(f"{model} model: unknown keys {sorted(unknown)}")
    return {**defaults, **overrides}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
