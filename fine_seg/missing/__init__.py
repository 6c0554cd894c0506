"""Missing-modality training methods of the fine stage (`fine.method` in the config).

    plain    EfficientSegNet as configured, zero-filled missing inputs (the baseline)
    shaspec  shared + specific encoders, alignment + modality-classification losses, dropout
    lckd     shared encoder, elected single-modality teachers, feature distillation
    passion  self-distillation full path → single-modality paths, relative preference
    hga      PASSION trained sequentially over the 15 modality groups + Reptile steps

`fine_seg.build_model(cfg)` builds the network of a model config whose `method` is not plain
(`fine_seg.missing.net.MultiEncoderNet`); `build_method(name, settings, ...)` the trainer hooks, with the
method's own settings model (pipeline.config.ShaSpecSettings, LCKDSettings, PassionSettings,
HGASettings: every default lives there).
"""

from __future__ import annotations

from typing import Any

from fine_seg.missing.method import MissingMethod, StepOutput

METHODS = ("plain", "shaspec", "lckd", "passion", "hga")


def build_method(name: str, settings: Any, **kw: Any) -> MissingMethod | None:
    """The per-step hooks of a method; None for `plain` (the trainer's own loss)."""
    if name == "plain":
        return None
    if name == "shaspec":
        from fine_seg.missing.shaspec import ShaSpec as cls
    elif name == "lckd":
        from fine_seg.missing.lckd import LCKD as cls
    elif name == "passion":
        from fine_seg.missing.passion import Passion as cls
    elif name == "hga":
        from fine_seg.missing.hga import HGA as cls
    else:
        raise ValueError(f"unknown fine.method {name!r} ({', '.join(METHODS)})")
    return cls(settings, **kw)


def model_fields(name: str, settings: Any) -> dict[str, Any]:
    """What the method adds to the fine model config (so exported weights rebuild the same net)."""
    if name == "plain":
        return {}
    channels = settings.specific_channels if name == "shaspec" else None
    return {"method": name, "specific_encoders": name == "shaspec",
            "specific_channels": list(channels) if channels else None}


__all__ = ["METHODS", "MissingMethod", "StepOutput", "build_method", "model_fields"]
