"""Checkpoints that survive a kill at any moment and never unpickle.

Layout under a stage's output folder:
  checkpoints/epoch_NNNN/{model.safetensors, train_state.pt, state.json[, method.safetensors]}
  (method.safetensors: a training method's own tensors, e.g. HGA's Reptile anchor; a directory written
  under a temporary name and renamed when complete), checkpoints/last.json (atomic pointer);
  best.safetensors + best.json (the best network on validation Dice, written atomically).
`train_state.pt` holds only tensors and plain containers (optimizer, GradScaler, RNG states)
and is read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.errors import SegpipeError
from pipeline.fsutil import atomic_path, atomic_write_text


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(out_dir: Path, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler | None, state: dict[str, Any], keep: int = 2,
                    method_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"epoch_{epoch:04d}"
    final = root / name
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_tensors(model), str(tmp / "model.safetensors"), metadata={"epoch": str(epoch)})
    if method_tensors:
        save_file({k: v.detach().cpu().contiguous() for k, v in method_tensors.items()}, str(tmp / "method.safetensors"))
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else {}, "rng": rng},
               tmp / "train_state.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "epoch": epoch}, indent=1))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():  # the same epoch again after a resume: replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    atomic_write_text(root / "last.json", json.dumps({"checkpoint": name, "epoch": epoch}))
    for old in sorted(root.glob("epoch_[0-9][0-9][0-9][0-9]"))[:-keep]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: Path) -> Path | None:
    pointer = Path(out_dir) / "checkpoints" / "last.json"
    if not pointer.exists():
        return None
    name = json.loads(pointer.read_text())["checkpoint"]
    path = pointer.parent / name
    if not (path / "state.json").exists():
        raise SegpipeError(f"{pointer}: points to {name}, which is missing or incomplete")
    return path


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    scaler: torch.amp.GradScaler | None, device: torch.device) -> dict[str, Any]:
    weights = load_file(str(path / "model.safetensors"), device=str(device))
    model.load_state_dict(weights, strict=True)
    extra = torch.load(path / "train_state.pt", map_location=device, weights_only=True)
    if optimizer is not None:
        optimizer.load_state_dict(extra["optimizer"])
    if scaler is not None and extra.get("scaler"):
        scaler.load_state_dict(extra["scaler"])
    torch.set_rng_state(extra["rng"]["torch"].cpu())
    if "cuda" in extra["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in extra["rng"]["cuda"]])
    return json.loads((path / "state.json").read_text())


def resume_from(out_dir: Path, stage: str, model_config: dict[str, Any], model: nn.Module,
                optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                device: torch.device) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor]] | None:
    """Load the latest checkpoint of `out_dir` into model/optimizer/scaler/RNG: (its path, its
    state.json, its method tensors), or None when there is none. A different model config is an error."""
    ckpt = latest_checkpoint(out_dir)
    if ckpt is None:
        return None
    saved = json.loads((ckpt / "state.json").read_text()).get("model_config")
    if saved != model_config:
        raise SegpipeError(f"{ckpt}: checkpoint was trained with a different {stage} model config "
                           f"({saved} vs {model_config})")
    state = load_checkpoint(ckpt, model, optimizer, scaler, device)
    return ckpt, state, load_method_tensors(ckpt, device)


def load_method_tensors(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """The training method's tensors saved with checkpoint `path` ({} when it saved none)."""
    f = Path(path) / "method.safetensors"
    return load_file(str(f), device=str(device)) if f.exists() else {}


def save_best(out_dir: Path, net: nn.Module, meta: dict[str, Any]) -> Path:
    path = Path(out_dir) / "best.safetensors"
    with atomic_path(path) as tmp:
        save_file(_tensors(net), str(tmp), metadata={"meta": json.dumps(meta)})
    atomic_write_text(Path(out_dir) / "best.json", json.dumps(meta, indent=1))
    return path
