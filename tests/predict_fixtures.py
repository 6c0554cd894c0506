"""Helpers for the predict tests: tiny weights folders and small synthetic inputs.

Random-initialised weights are enough wherever accuracy does not matter (geometry, naming,
bad input); they go through the same export format + manifest as trained ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pipeline.image_io import write_image

TINY_MODEL = {"channels": [4, 8, 16], "blocks": 1}


def make_random_weights(dest: Path, task: str = "flare", *, coarse_size=(16, 24, 24), fine_size=(16, 32, 32),
                        fine_patch=None, seed: int = 0, fp16: bool = True, extra: dict[str, Any] | None = None) -> Path:
    import torch
    from safetensors.torch import save_file

    from pipeline.config import PrepareSection
    from pipeline.tasks import get_task
    from pipeline.training.export import build_stage_model
    from pipeline.weights import write_manifest

    spec = get_task(task)
    prep = PrepareSection(coarse_size=coarse_size, fine_size=fine_size,
                          fine_margin_mm=20.0 if task == "flare" else 10.0)
    dest.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    for stage, size, patch in (("coarse", coarse_size, coarse_size), ("fine", fine_size, fine_patch or fine_size)):
        model_cfg = {"in_channels": len(spec.modalities), "num_classes": spec.num_classes, **TINY_MODEL}
        model = build_stage_model(stage, model_cfg)
        tensors = {k: (v.half() if fp16 and v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(dest / f"{stage}.safetensors"))
        info = {"stage": stage, "model": model.cfg, "num_classes": spec.num_classes, "sample_stage": stage,
                "patch_size": list(patch), "task": task, "modalities": list(spec.modalities),
                "sample_size": list(size), "dtype": "float16" if fp16 else "float32"}
        if stage == "fine":
            info["roi_margin_mm"] = prep.fine_margin_mm
        (dest / f"{stage}.json").write_text(json.dumps(info))
    write_manifest(dest, name=dest.name, task=task, preprocessing=prep.model_dump(mode="json"), extra=extra)
    return dest


def ct_volume(shape=(24, 40, 36), seed=0) -> np.ndarray:
    """int16 HU: air around an elliptic body with a few brighter blobs."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    body = ((y - shape[1] / 2) / (0.42 * shape[1])) ** 2 + ((x - shape[2] / 2) / (0.45 * shape[2])) ** 2 < 1
    image = np.where(body, rng.normal(30, 20, shape), -1000).astype(np.int16)
    image[(z - shape[0] / 2) ** 2 / 16 + (y - shape[1] / 2) ** 2 / 25 + (x - shape[2] / 3) ** 2 / 25 < 1] += 120
    return image


def save_image(array: np.ndarray, path: Path, *, spacing=(0.8, 0.8, 2.5), origin=(10.0, -20.0, 30.0),
               direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        image.SetDirection(tuple(float(v) for v in np.asarray(direction, float).ravel()))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(image, path)
    return image


def dice(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.count_nonzero(a & b)
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else 2 * inter / total
