"""The one small set of 3D building blocks shared by the coarse and fine networks."""

from pipeline.nn.blocks import (
    AnisoBlock,
    ConvNormAct,
    ResBlock,
    StripPoolContext,
    count_parameters,
    deep_supervision_heads,
    encoder_stages,
    init_weights,
    merged_config,
    resolve_strides,
    upsample_to,
    with_deep_supervision,
)

__all__ = [
    "AnisoBlock",
    "ConvNormAct",
    "ResBlock",
    "StripPoolContext",
    "count_parameters",
    "deep_supervision_heads",
    "encoder_stages",
    "init_weights",
    "merged_config",
    "resolve_strides",
    "upsample_to",
    "with_deep_supervision",
]
