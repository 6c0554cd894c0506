"""Deployable model weights: `model_weights/<name>/` = safetensors per stage + `manifest.json`.

    <name>/manifest.json        task, labels, modalities, preprocessing, per-stage model configs,
                                sha256 and size of every file, versions, training_data (optional:
                                what the work folder was prepared from, pipeline.provenance)
    <name>/coarse.safetensors   <name>/coarse.json   (pipeline.training.export format)
    <name>/fine.safetensors     <name>/fine.json

Loading verifies every listed file's sha256 before any tensor is read, reads tensors with
safetensors only (never a pickle), and rebuilds each network through its stage's
`build_model(cfg)`; a missing file, a hash mismatch or a state-dict mismatch is a one-line
WeightsError naming the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.errors import SegpipeError
from pipeline.fsutil import atomic_write_text, sha256_file

MANIFEST = "manifest.json"
FORMAT = "segpipe-weights"
FORMAT_VERSION = 1
STAGES = ("coarse", "fine")


class WeightsError(SegpipeError):
    """Weights that cannot be used: missing, tampered with, or not matching their manifest."""


@dataclass
class StageWeights:
    name: str
    model: Any  # torch.nn.Module in eval mode
    info: dict[str, Any]  # the stage's manifest entry (model config, sample size, patch size, ...)


@dataclass
class LoadedWeights:
    path: Path
    manifest: dict[str, Any]
    stages: dict[str, StageWeights]

    @property
    def task(self) -> str:
        return str(self.manifest["task"])

    @property
    def modalities(self) -> list[str]:
        return list(self.manifest["modalities"])

    @property
    def preprocessing(self) -> dict[str, Any]:
        return dict(self.manifest["preprocessing"])


# writing -----------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    import numpy
    import safetensors
    import torch

    from pipeline import __version__

    return {"segpipe": __version__, "torch": torch.__version__, "safetensors": safetensors.__version__,
            "numpy": numpy.__version__}


def write_manifest(folder: str | Path, *, name: str, task: str, preprocessing: dict[str, Any],
                   extra: dict[str, Any] | None = None) -> Path:
    """Hash the stage files in `folder` (`<stage>.safetensors` + `<stage>.json`) into its manifest."""
    from pipeline.tasks import get_task

    folder = Path(folder)
    spec = get_task(task)
    stages: dict[str, Any] = {}
    files: dict[str, Any] = {}
    for stage in STAGES:
        w, j = folder / f"{stage}.safetensors", folder / f"{stage}.json"
        if not w.is_file() or not j.is_file():
            raise WeightsError(f"{folder}: {stage} weights missing ({w.name} and {j.name} are both needed)")
        info = json.loads(j.read_text())
        if info.get("stage") != stage:
            raise WeightsError(f"{j}: describes stage {info.get('stage')!r}, expected {stage!r}")
        stages[stage] = {
            "weights": w.name, "config": j.name, "model": info["model"], "dtype": info.get("dtype", "float32"),
            "sample_size": info.get("sample_size"), "sample_spacing": info.get("sample_spacing"),
            "patch_size": info.get("patch_size"), "roi_margin_mm": info.get("roi_margin_mm"),
            "best": info.get("best", {}),
        }
        for p in (w, j):
            files[p.name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    # a BraTS model with a fifth class was trained under the brats2024 convention (label 4 = cavity)
    classes = max(int(st["model"].get("num_classes", 0)) for st in stages.values())
    if spec.name == "brats" and classes > spec.num_classes:
        spec = get_task(task, "brats2024")
        extra = {"label_convention": "brats2024", **(extra or {})}
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": name, "task": spec.name,
        "image_kind": spec.image_kind, "modalities": list(spec.modalities),
        "labels": {str(k): v for k, v in spec.labels.items()}, "num_classes": spec.num_classes,
        "preprocessing": preprocessing, "stages": stages, "files": files,
        "versions": _versions(), "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    out = folder / MANIFEST
    atomic_write_text(out, json.dumps(manifest, indent=1) + "\n")
    return out


def package_work(work: str | Path, dest: str | Path, *, name: str | None = None, fp16: bool = True,
                 extra: dict[str, Any] | None = None) -> Path:
    """Export both trained stages of WORK (best checkpoints) to `dest` and write its manifest.

    The manifest's `training_data` is what prepare recorded about WORK's data folder (synthetic
    or not; null for a work folder prepared before prepare recorded it); `extra` may override it."""
    from pipeline.samples import SampleStore
    from pipeline.training.export import export_stage

    store = SampleStore(work)
    if store.config is None:
        raise WeightsError(f"{work}: the index holds no prepare config")
    dest = Path(dest)
    for stage in STAGES:
        export_stage(work, stage, dest, fp16=fp16)
    training_data = (store.meta.get("prepare") or {}).get("training_data")
    return write_manifest(dest, name=name or dest.name, task=store.task.name,
                          preprocessing=store.config.model_dump(mode="json"),
                          extra={"training_data": training_data, **(extra or {})})


# reading -----------------------------------------------------------------------------------
def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise WeightsError(f"{folder}: no {MANIFEST} (not a segpipe weights folder)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: unreadable ({' '.join(str(exc).split())})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise WeightsError(f"{path}: not a {FORMAT} manifest")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise WeightsError(f"{path}: format version {manifest.get('format_version')} is newer than this segpipe reads "
                           f"({FORMAT_VERSION})")
    for key in ("task", "modalities", "preprocessing", "stages", "files"):
        if key not in manifest:
            raise WeightsError(f"{path}: no {key!r} entry")
    return manifest


def verify_files(folder: str | Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists exists with its recorded size and sha256; stage files are listed."""
    folder = Path(folder)
    files = manifest["files"]
    for stage, entry in manifest["stages"].items():
        for key in ("weights", "config"):
            if entry.get(key) not in files:
                raise WeightsError(f"{folder / MANIFEST}: {stage} {key} file {entry.get(key)!r} has no sha256 entry")
    for name, meta in files.items():
        p = folder / name
        if Path(name).name != name or name.startswith("."):
            raise WeightsError(f"{folder / MANIFEST}: file entry {name!r} is not a plain file name")
        if not p.is_file():
            raise WeightsError(f"{p}: listed in the manifest but missing")
        size = p.stat().st_size
        if "bytes" in meta and int(meta["bytes"]) != size:
            raise WeightsError(f"{p}: {size} bytes, the manifest says {meta['bytes']} (file changed or truncated)")
        digest = sha256_file(p)
        if digest != meta.get("sha256"):
            raise WeightsError(f"{p}: sha256 mismatch (manifest {str(meta.get('sha256'))[:12]}…, file {digest[:12]}…)")


def load_weights(folder: str | Path, device: Any = "cpu", *, verify: bool = True) -> LoadedWeights:
    """Verify and load every stage of a weights folder (fp32 networks on `device`, eval mode)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from pipeline.training.export import build_stage_model

    folder = Path(folder)
    manifest = read_manifest(folder)
    if verify:
        verify_files(folder, manifest)
    stages = {}
    for stage in STAGES:
        entry = manifest["stages"].get(stage)
        if entry is None:
            raise WeightsError(f"{folder / MANIFEST}: no {stage} stage")
        path = folder / entry["weights"]
        try:
            tensors = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path}: not a readable safetensors file ({' '.join(str(exc).split())})") from None
        try:
            model = build_stage_model(stage, entry["model"])
            model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, strict=True)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            first = " ".join(str(exc).split())[:300]
            raise WeightsError(f"{path}: does not match the {stage} model config in the manifest ({first})") from None
        stages[stage] = StageWeights(stage, model.to(device).eval().requires_grad_(False), entry)
    return LoadedWeights(folder, manifest, stages)


# finding -----------------------------------------------------------------------------------
def default_weights_root() -> Path:
    """SEGPIPE_WEIGHTS (set in the image), else the repository's model_weights/."""
    env = os.environ.get("SEGPIPE_WEIGHTS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "model_weights"


def find_weights(root: str | Path, task: str) -> Path:
    """`root` itself when it holds a manifest; else its sub-folder for `task`, preferring trained
    weights over the `*_demo` ones (so a packaged model wins over the shipped demo)."""
    root = Path(root)
    if (root / MANIFEST).is_file():
        return root
    candidates = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        try:
            m = read_manifest(sub)
        except WeightsError:
            continue
        if m.get("task") == task:
            candidates.append((sub.name.endswith("_demo"), sub.name, sub))
    if not candidates:
        raise WeightsError(f"{root}: no weights for task {task!r} (expected a sub-folder with a {MANIFEST})")
    return sorted(candidates)[0][2]
