"""Start a training run from packaged weights (`<stage>.train.init_weights`): fine-tuning.

The weights folder is read through `pipeline.weights.load_weights`, so its manifest and sha256
sums are checked and only safetensors are read; the stage's network must have the architecture
the run configures (same model config), else the run stops with the difference named. Every
network of the run (both CPS networks) starts from the same tensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from pipeline.errors import SegpipeError
from pipeline.weights import MANIFEST, default_weights_root, load_weights


def resolve_weights_folder(value: str) -> Path:
    """The folder itself when it exists, else `value` under the weights root (model_weights/)."""
    path = Path(value)
    if (path / MANIFEST).is_file():
        return path
    under_root = default_weights_root() / value
    if not path.is_absolute() and (under_root / MANIFEST).is_file():
        return under_root
    raise SegpipeError(f"init_weights {value!r}: no {MANIFEST} there nor under {default_weights_root()}")


def initialise_from(nets: list[nn.Module], stage: str, model_config: dict[str, Any], value: str) -> dict[str, Any]:
    """Copy the packaged `stage` network of `value` into every net; returns its manifest entry."""
    folder = resolve_weights_folder(value)
    weights = load_weights(folder)
    entry = weights.stages[stage].info
    theirs, model_config = entry["model"], json.loads(json.dumps(model_config))  # tuples as the manifest's lists
    diff = sorted(k for k in set(theirs) | set(model_config) if theirs.get(k) != model_config.get(k))
    if diff:
        shown = ", ".join(f"{k}: {theirs.get(k)!r} there, {model_config.get(k)!r} here" for k in diff[:4])
        raise SegpipeError(f"init_weights {folder}: its {stage} network differs from the configured one ({shown})")
    state = weights.stages[stage].model.state_dict()
    for net in nets:
        net.load_state_dict(state, strict=True)
    return {"folder": str(folder), "task": weights.task, "best": entry.get("best"),
            "training_data": weights.manifest.get("training_data") or weights.manifest.get("trained_on")}
