"""Coarse localiser: residual 3D U-Net on the whole (down-sampled) volume, softmax with background."""

from coarse_seg.model import CoarseUNet, build_model, default_model_config

__all__ = ["CoarseUNet", "build_model", "default_model_config"]
