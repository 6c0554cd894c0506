"""Write synthetic cases in the challenge folder layouts, with a manifest written last.

FLARE22  OUT/images/FLARE22_Tr_XXXX_0000.nii.gz, OUT/labels/FLARE22_Tr_XXXX.nii.gz,
         OUT/unlabeled/FLARE22_Unl_XXXX_0000.nii.gz, OUT/validation/FLARE22_Val_XXXX_0000.nii.gz,
         OUT/validation_labels/FLARE22_Val_XXXX.nii.gz (XXXX from 0001); int16 HU, uint8 labels.
BraTS    legacy: OUT/BraTS20_Training_XXX/BraTS20_Training_XXX_{flair,t1,t1ce,t2,seg}.nii.gz (from 001)
         2023:   OUT/BraTS-GLI-XXXXX-000/BraTS-GLI-XXXXX-000-{t1c,t1n,t2f,t2w,seg}.nii.gz (from 00000)
OUT/synth.json lists every file written, the options, per-case geometry and volumes. While a
run is in progress the manifest says "complete": false, so an interrupted folder is still
recognised as synth output (and may be regenerated over) but never mistaken for a finished one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import SegpipeError
from pipeline.fsutil import atomic_write_text, check_case_id
from pipeline.image_io import Reorientation, image_from_array, write_image
from pipeline.log import get_logger, progress
from pipeline.provenance import SYNTH_GENERATOR, SYNTH_MANIFEST, mark_synthetic
from pipeline.synth.noise import case_seed, rng_for
from pipeline.synth.orient import ORIENTATIONS, reorientation_to
from pipeline.tasks import BRATS_2023_TAGS, BRATS_LEGACY_TAGS, BRATS_MODALITIES, FLARE22_LABELS

MANIFEST = SYNTH_MANIFEST
GENERATOR = SYNTH_GENERATOR
FORMAT_VERSION = 1
LAYOUTS = ("2023", "legacy")
log = get_logger("synth")


# -- output folder policy ------------------------------------------------------------------
def prepare_output(out: Path, *, force: bool) -> list[str]:
    """Check that `out` may be written; returns the files a previous synth run listed there."""
    if out.exists() and not out.is_dir():
        raise SegpipeError(f"{out}: exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return []
    manifest = out / MANIFEST
    previous: dict[str, Any] | None = None
    if manifest.is_file():
        try:
            previous = json.loads(manifest.read_text())
        except (OSError, ValueError):
            previous = None
    if not isinstance(previous, dict) or previous.get("generator") != GENERATOR:
        if not force:
            raise SegpipeError(f"{out}: folder is not empty and holds no {MANIFEST} from a previous synth run (use --force to write into it)")
        return []
    return [str(f) for f in previous.get("files", []) if isinstance(f, str)]


def _start_manifest(out: Path, kind: str, options: dict[str, Any], previous: list[str], planned: list[str]) -> None:
    """Mark the folder as synth output in progress, listing every file this run may create."""
    out.mkdir(parents=True, exist_ok=True)
    stub = {"generator": GENERATOR, "format_version": FORMAT_VERSION, "kind": kind, "complete": False,
            "options": options, "files": sorted(set(previous) | set(planned)), "cases": []}
    atomic_write_text(out / MANIFEST, json.dumps(stub, indent=1) + "\n")


def _finish_manifest(out: Path, kind: str, options: dict[str, Any], previous: list[str], cases: list[dict[str, Any]]) -> dict[str, Any]:
    files = sorted({f for c in cases for f in c["files"].values()})
    for stale in sorted(set(previous) - set(files)):  # our own files from an earlier, larger run
        path = (out / stale).resolve()
        if path.is_relative_to(out.resolve()) and path.is_file():
            path.unlink()
    manifest = {"generator": GENERATOR, "format_version": FORMAT_VERSION, "kind": kind, "complete": True,
                "options": options, "files": files, "cases": cases}
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return manifest


def write_volume(array: np.ndarray, reo: Reorientation, path: Path, kind: str) -> None:
    """Canonical array → stored orientation → atomic .nii.gz, marked as `segpipe synth <kind>`."""
    write_image(mark_synthetic(image_from_array(reo.array_to_original(array), reo.original), kind), path)


def _geometry_json(reo: Reorientation, orientation: str) -> dict[str, Any]:
    return {"orientation": orientation, **reo.original.to_json(), "perm": list(reo.perm), "flip": list(reo.flip)}


def _run(jobs: list[tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]], workers: int, desc: str) -> list[dict[str, Any]]:
    if workers <= 1 or len(jobs) <= 1:
        return [fn(*args) for fn, args in progress(jobs, total=len(jobs), desc=desc)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(fn, *args) for fn, args in jobs]
        return [f.result() for f in progress(futures, total=len(futures), desc=desc)]


# -- FLARE ---------------------------------------------------------------------------------
FLARE_ROLES = {  # role → (image folder, label folder or None, id prefix)
    "train": ("images", "labels", "FLARE22_Tr"),
    "unlabeled": ("unlabeled", None, "FLARE22_Unl"),
    "validation": ("validation", "validation_labels", "FLARE22_Val"),
}


def _flare_job(out: str, role: str, index: int, seed: int, size: str, orientation: str) -> dict[str, Any]:
    from pipeline.synth.flare import make_flare_case

    started = time.perf_counter()
    image_dir, label_dir, prefix = FLARE_ROLES[role]
    case_id = check_case_id(f"{prefix}_{index:04d}")
    cseed = case_seed(seed, role, index)
    case = make_flare_case(cseed, size)
    reo = reorientation_to(case.geometry, orientation, rng_for(cseed, 99))
    files = {"image": f"{image_dir}/{case_id}_0000.nii.gz"}
    write_volume(case.image, reo, Path(out) / files["image"], "flare")
    if label_dir is not None:
        files["label"] = f"{label_dir}/{case_id}.nii.gz"
        write_volume(case.label, reo, Path(out) / files["label"], "flare")
    return {
        "id": case_id, "role": role, "seed": cseed, "files": files, "geometry": _geometry_json(reo, orientation),
        "organ_volumes_mm3": {k: round(v, 1) for k, v in case.organ_volumes_mm3().items()},
        "scan": case.info["scan"], "seconds": round(time.perf_counter() - started, 3),
    }


def write_flare_dataset(
    out: str | os.PathLike[str], *, cases: int, unlabeled: int = 0, validation: int = 0, seed: int = 0,
    size: str = "small", orientation: str = "lps", force: bool = False, workers: int = 1,
) -> dict[str, Any]:
    """Write a FLARE22-layout folder of synthetic CT; returns the manifest."""
    from pipeline.synth.flare import SIZES

    _check_common(size, SIZES, orientation, workers)
    for name, n in (("cases", cases), ("unlabeled", unlabeled), ("validation", validation)):
        if n < 0:
            raise SegpipeError(f"--{name} must be ≥ 0, got {n}")
    if cases + unlabeled + validation == 0:
        raise SegpipeError("nothing to write: --cases, --unlabeled and --validation are all 0")
    out_path = Path(out)
    options = {"cases": cases, "unlabeled": unlabeled, "validation": validation, "seed": seed, "size": size,
               "orientation": orientation, "labels": {str(k): v for k, v in FLARE22_LABELS.items()}}
    previous = prepare_output(out_path, force=force)
    plan = [(role, i) for role, n in (("train", cases), ("validation", validation), ("unlabeled", unlabeled)) for i in range(1, n + 1)]
    planned = []
    for role, i in plan:
        image_dir, label_dir, prefix = FLARE_ROLES[role]
        planned.append(f"{image_dir}/{prefix}_{i:04d}_0000.nii.gz")
        if label_dir:
            planned.append(f"{label_dir}/{prefix}_{i:04d}.nii.gz")
    _start_manifest(out_path, "flare", options, previous, planned)
    jobs = [(_flare_job, (str(out_path), role, i, seed, size, orientation)) for role, i in plan]
    results = _run(jobs, workers, "synth flare")
    manifest = _finish_manifest(out_path, "flare", options, previous, results)
    log.info("synth flare: %d labelled, %d validation, %d unlabeled cases (%s) in %s", cases, validation, unlabeled, size, out_path)
    return manifest


# -- BraTS ---------------------------------------------------------------------------------
def parse_missing_rates(text: str | None) -> dict[str, float]:
    """'flair=0.6,t1=0.2,...' (BraTS or 2023 tags) → rate per modality; unnamed ones are 0."""
    rates = dict.fromkeys(BRATS_MODALITIES, 0.0)
    if text is None or not text.strip():
        return rates
    alias = {**{m: m for m in BRATS_MODALITIES}, **{tag: m for m, tag in BRATS_2023_TAGS.items()}}
    seen: set[str] = set()
    for part in text.split(","):
        if "=" not in part:
            raise SegpipeError(f"--missing-rates: {part.strip()!r} is not MODALITY=RATE (e.g. flair=0.6,t1=0.2,t1ce=0.4,t2=0.8)")
        name, raw = (p.strip() for p in part.split("=", 1))
        key = alias.get(name.lower())
        if key is None:
            raise SegpipeError(f"--missing-rates: unknown modality {name!r}; use {', '.join(BRATS_MODALITIES)} (or {', '.join(BRATS_2023_TAGS.values())})")
        if key in seen:
            raise SegpipeError(f"--missing-rates: {key} given twice")
        seen.add(key)
        try:
            rate = float(raw)
        except ValueError:
            raise SegpipeError(f"--missing-rates: {name}={raw!r} is not a number") from None
        if not 0.0 <= rate < 1.0:
            raise SegpipeError(f"--missing-rates: {name}={raw} is outside [0, 1)")
        rates[key] = rate
    return rates


def draw_present(rng: np.random.Generator, rates: dict[str, float]) -> tuple[str, ...]:
    """Modalities kept for one case: each dropped with its rate, never all four.

    If the draw drops everything, one modality is restored, chosen with probability ∝ (1 - rate)
    so that the rarely-missing ones absorb the correction and the imbalance is preserved.
    """
    keep = [m for m in BRATS_MODALITIES if rng.random() >= rates.get(m, 0.0)]
    if not keep:
        weights = np.array([1.0 - rates.get(m, 0.0) for m in BRATS_MODALITIES])
        keep = [BRATS_MODALITIES[int(rng.choice(len(weights), p=weights / weights.sum()))]]
    return tuple(keep)


def brats_case_id(layout: str, index: int) -> str:
    return check_case_id(f"BraTS-GLI-{index:05d}-000" if layout == "2023" else f"BraTS20_Training_{index:03d}")


def brats_file_name(layout: str, case_id: str, what: str) -> str:
    """File name of modality `what` (flair/t1/t1ce/t2) or 'seg' in `layout`."""
    if layout == "2023":
        return f"{case_id}-{BRATS_2023_TAGS.get(what, what)}.nii.gz"
    return f"{case_id}_{BRATS_LEGACY_TAGS.get(what, what)}.nii.gz"


def _brats_job(out: str, index: int, seed: int, size: str, orientation: str, layout: str, convention: str,
               rates: dict[str, float], atlas: str) -> dict[str, Any]:
    from pipeline.synth.brats import make_brats_case

    started = time.perf_counter()
    number = index - 1 if layout == "2023" else index
    case_id = brats_case_id(layout, number)
    cseed = case_seed(seed, "train", index)
    present = draw_present(rng_for(case_seed(seed, "missing", index), 0), rates)
    case = make_brats_case(cseed, size, atlas)
    reo = reorientation_to(case.geometry, orientation, rng_for(cseed, 99))
    folder = Path(out) / case_id
    files = {}
    for modality in present:
        files[modality] = f"{case_id}/{brats_file_name(layout, case_id, modality)}"
        write_volume(case.images[modality], reo, folder / brats_file_name(layout, case_id, modality), "brats")
    files["seg"] = f"{case_id}/{brats_file_name(layout, case_id, 'seg')}"
    write_volume(case.label_in(convention), reo, folder / brats_file_name(layout, case_id, "seg"), "brats")
    return {
        "id": case_id, "seed": cseed, "files": files, "present": list(present),
        "missing": [m for m in BRATS_MODALITIES if m not in present], "geometry": _geometry_json(reo, orientation),
        "atlas": case.info["atlas"], "tumour_volumes_mm3": case.info["tumour_volumes_mm3"],
        "seconds": round(time.perf_counter() - started, 3),
    }


def write_brats_dataset(
    out: str | os.PathLike[str], *, cases: int, layout: str = "2023", convention: str | None = None,
    missing_rates: dict[str, float] | str | None = None, seed: int = 0, size: str = "small", orientation: str = "lps",
    atlas: str = "auto", force: bool = False, workers: int = 1,
) -> dict[str, Any]:
    """Write a BraTS-layout folder of synthetic MRI; returns the manifest."""
    from pipeline.synth.atlas import load_atlas, resolve_atlas
    from pipeline.synth.brats import SIZES

    _check_common(size, SIZES, orientation, workers)
    if layout not in LAYOUTS:
        raise SegpipeError(f"unknown BraTS layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    convention = convention or layout
    if convention not in LAYOUTS:
        raise SegpipeError(f"unknown label convention {convention!r}; choose one of {', '.join(LAYOUTS)}")
    if cases < 1:
        raise SegpipeError(f"--cases must be ≥ 1, got {cases}")
    rates = parse_missing_rates(missing_rates) if isinstance(missing_rates, str) or missing_rates is None else dict(missing_rates)
    for m, r in rates.items():
        if m not in BRATS_MODALITIES or not 0.0 <= float(r) < 1.0:
            raise SegpipeError(f"missing rate {m}={r}: modality must be one of {', '.join(BRATS_MODALITIES)} and rate in [0, 1)")
    try:
        atlas_kind = resolve_atlas(atlas)
    except ValueError as exc:
        raise SegpipeError(str(exc)) from None
    out_path = Path(out)
    options = {"cases": cases, "layout": layout, "convention": convention, "missing_rates": rates, "seed": seed,
               "size": size, "orientation": orientation, "atlas": load_atlas(atlas_kind).source}
    previous = prepare_output(out_path, force=force)
    planned = [f"{cid}/{brats_file_name(layout, cid, what)}" for i in range(1, cases + 1)
               for cid in [brats_case_id(layout, i - 1 if layout == "2023" else i)] for what in (*BRATS_MODALITIES, "seg")]
    _start_manifest(out_path, "brats", options, previous, planned)
    jobs = [(_brats_job, (str(out_path), i, seed, size, orientation, layout, convention, rates, atlas_kind)) for i in range(1, cases + 1)]
    results = _run(jobs, workers, "synth brats")
    manifest = _finish_manifest(out_path, "brats", options, previous, results)
    log.info("synth brats: %d cases (%s layout, %s labels, %s) in %s", cases, layout, convention, size, out_path)
    return manifest


def _check_common(size: str, sizes: dict[str, Any], orientation: str, workers: int) -> None:
    if size not in sizes:
        raise SegpipeError(f"unknown size {size!r}; choose one of {', '.join(sizes)}")
    if orientation not in ORIENTATIONS:
        raise SegpipeError(f"unknown orientation {orientation!r}; choose one of {', '.join(ORIENTATIONS)}")
    if workers < 1:
        raise SegpipeError(f"--workers must be ≥ 1, got {workers}")


__all__ = ["brats_case_id", "brats_file_name", "draw_present", "parse_missing_rates", "prepare_output",
           "write_brats_dataset", "write_flare_dataset", "write_volume"]
