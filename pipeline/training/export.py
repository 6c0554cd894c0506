"""Deployable weights of a trained stage: `<name>.safetensors` (optionally fp16) + `<name>.json`.

The JSON carries everything needed to rebuild the network (`coarse_seg.build_model(cfg)` /
`fine_seg.build_model(cfg)`) and to feed it (sample size, modalities, labels). The inference
side (issue #5) adds `model_weights/<name>/manifest.json` with the files' sha256.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pipeline.errors import SegpipeError
from pipeline.fsutil import atomic_path, atomic_write_text


def stage_dir(work: str | Path, stage: str) -> Path:
    return Path(work) / "train" / stage


def build_stage_model(stage: str, model_config: dict[str, Any]) -> torch.nn.Module:
    """The per-stage constructor, chosen by name (the only place that maps stage → network)."""
    if stage == "coarse":
        from coarse_seg import build_model
    elif stage == "fine":
        from fine_seg import build_model
    else:
        raise SegpipeError(f"unknown stage {stage!r} (coarse, fine)")
    return build_model(model_config)


def export_stage(work: str | Path, stage: str, dest: str | Path, *, fp16: bool = False,
                 name: str | None = None) -> tuple[Path, Path]:
    """Write the best network of `WORK/train/<stage>` to `dest/<name>.{safetensors,json}`."""
    src = stage_dir(work, stage)
    weights_path, info_path = src / "best.safetensors", src / "model_config.json"
    if not weights_path.exists() or not info_path.exists():
        raise SegpipeError(f"{src}: no trained {stage} model (best.safetensors/model_config.json missing)")
    info = json.loads(info_path.read_text())
    best = json.loads((src / "best.json").read_text()) if (src / "best.json").exists() else {}
    tensors = load_file(str(weights_path))
    build_stage_model(stage, info["model"]).load_state_dict(tensors, strict=True)  # refuse a mismatch now
    if fp16:
        tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in tensors.items()}
    name = name or stage
    dest = Path(dest)
    out_w, out_j = dest / f"{name}.safetensors", dest / f"{name}.json"
    with atomic_path(out_w) as tmp:
        save_file(tensors, str(tmp), metadata={"stage": stage, "dtype": "float16" if fp16 else "float32"})
    atomic_write_text(out_j, json.dumps({**info, "dtype": "float16" if fp16 else "float32",
                                         "best": best}, indent=1))
    return out_w, out_j


def load_stage(weights: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild an exported network (fp32 on the device, eval mode) and return it with its JSON."""
    weights = Path(weights)
    info = json.loads(weights.with_suffix(".json").read_text())
    model = build_stage_model(info["stage"], info["model"])
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval(), info
