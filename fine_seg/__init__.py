"""Fine segmenter: EfficientSegNet-style network on ROI crops with an N-modality + availability-mask input."""

from fine_seg.build import build_model
from fine_seg.model import EfficientSegNet, default_model_config

__all__ = ["EfficientSegNet", "build_model", "default_model_config"]
