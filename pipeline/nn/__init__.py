"""The one small set of 3D building blocks shared by the coarse and fine networks."""

from pipeline.nn.blocks import (
    AnisoBlock,
    ConvNormAct,
    ResBlock,
    StripPoolContext,
    count_parameters,
    init_weights,
    merged_config,
    upsample_to,
)

__all__ = [
    "AnisoBlock",
    "ConvNormAct",
    "ResBlock",
    "StripPoolContext",
    "count_parameters",
    "init_weights",
    "merged_config",
    "upsample_to",
]
