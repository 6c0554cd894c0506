"""FLARE22 DSC and NSD, reproducing the organisers' `FLARE22_DSC_NSD_Eval.py`.

Rules reproduced (each tested):
- labels 1–13 with the per-organ NSD tolerances of pipeline.tasks;
- spacing from the *ground-truth* header, arrays cast to uint8 as `np.uint8(get_fdata())`;
- organ absent from both → DSC = NSD = 1; absent from GT only → 0 / 0; absent from the
  prediction only → the metric code's 0 / 0;
- aorta, IVC and esophagus are scored on the GT's z-range [z_min, z_max) — half-open, so the
  top GT slice is excluded, exactly as the official slice `[:, :, z_lower:z_upper]`. nibabel's
  axis 2 is the image's third (ITK z) axis, which is axis 0 of our (z, y, x) arrays;
- values rounded to 4 decimals, as the organisers' CSV.

One deviation, where the official code crashes: a GT organ on a single slice leaves an empty
z-range; we then score both cropped (empty) volumes as "absent from both" (1 / 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from evaluation.matching import CasePair, match_cases
from evaluation.results import CaseResult, build_results
from evaluation.surface import grow_box, surface_dice, surface_distances, surfel_area_table, union_box
from pipeline.errors import CaseError, SegpipeError
from pipeline.image_io import Geometry, read_image
from pipeline.log import get_logger, progress
from pipeline.tasks import FLARE22_LABELS, FLARE22_NSD_TOLERANCE_MM, FLARE22_ZRANGE_LABELS

log = get_logger("evaluate.flare")
METRICS = ["dsc", "nsd"]
DECIMALS = 4


def read_label_map(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float], Geometry]:
    """(z, y, x) uint8 array cast as the organisers do, spacing in array order, geometry."""
    image = read_image(path)
    array = sitk.GetArrayFromImage(image)  # a copy: a view dies with `image`
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.integer) and (array.min() < 0 or array.max() > 255):
            log.warning("%s: label values outside 0..255 wrap around in the organisers' uint8 cast", path)
        array = array.astype(np.uint8)
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    return np.ascontiguousarray(array), spacing, Geometry.of(image)  # type: ignore[return-value]


def flare_scores(gt: np.ndarray, pred: np.ndarray, spacing: tuple[float, float, float]) -> dict[int, tuple[float, float]]:
    """Unrounded (DSC, NSD) per FLARE label for two (z, y, x) label arrays of one shape."""
    if gt.shape != pred.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {gt.shape}")
    top = max(FLARE22_LABELS)
    gt_count = np.bincount(gt.ravel(), minlength=256)
    pred_count = np.bincount(pred.ravel(), minlength=256)
    gt_boxes = ndimage.find_objects(gt, max_label=top)
    pred_boxes = ndimage.find_objects(pred, max_label=top)
    scores: dict[int, tuple[float, float]] = {}
    for label in FLARE22_LABELS:
        if gt_count[label] == 0:
            scores[label] = (1.0, 1.0) if pred_count[label] == 0 else (0.0, 0.0)
            continue
        gt_box = gt_boxes[label - 1]
        region = grow_box(union_box(gt_box, pred_boxes[label - 1]), 1, gt.shape)  # type: ignore[arg-type]
        if label in FLARE22_ZRANGE_LABELS:
            z_lo, z_hi = gt_box[0].start, gt_box[0].stop - 1  # [min, max): top GT slice excluded
            if z_lo >= z_hi:  # single-slice GT: nothing left to score (the official code crashes)
                scores[label] = (1.0, 1.0)
                continue
            region = (slice(max(region[0].start, z_lo), min(region[0].stop, z_hi)), *region[1:])
        g = gt[region] == label
        p = pred[region] == label
        n_g, n_p = int(np.count_nonzero(g)), int(np.count_nonzero(p))
        dsc = 2.0 * int(np.count_nonzero(g & p)) / (n_g + n_p)
        nsd = surface_dice(surface_distances(g, p, spacing), FLARE22_NSD_TOLERANCE_MM[label])
        scores[label] = (dsc, 0.0 if math.isnan(nsd) else nsd)
    return scores


def _labels_entry(scores: dict[int, tuple[float, float]]) -> dict[str, dict[str, Any]]:
    return {
        FLARE22_LABELS[k]: {"id": k, "dsc": round(float(d), DECIMALS), "nsd": round(float(n), DECIMALS)}
        for k, (d, n) in scores.items()
    }


def penalty_labels() -> dict[str, dict[str, Any]]:
    """A missing, failed or timed-out case: every organ 0 / 0."""
    return _labels_entry({k: (0.0, 0.0) for k in FLARE22_LABELS})


def evaluate_case(pair: CasePair) -> CaseResult:
    """Score one case; problems become a failed (zero-scored) case, never an exception."""
    if pair.pred is None:
        return CaseResult(pair.case, penalty_labels(), status="missing")
    try:
        gt, spacing, gt_geo = read_label_map(pair.gt)
        pred, _, pred_geo = read_label_map(pair.pred)
        if gt.shape != pred.shape:
            raise CaseError(pair.case, f"prediction size {pred_geo.size} differs from ground truth {gt_geo.size}")
        warnings = [f"{d} (scored with the ground truth's spacing)" for d in gt_geo.differences(pred_geo)]
        result = CaseResult(pair.case, _labels_entry(flare_scores(gt, pred, spacing)))
        if warnings:
            result.extra["warnings"] = warnings
        return result
    except SegpipeError as exc:
        return CaseResult(pair.case, penalty_labels(), status="failed", error=str(exc))


def run_cases(
    func: Callable[[CasePair], CaseResult], pairs: list[CasePair], workers: int, desc: str
) -> list[CaseResult]:
    """`func` over cases with a process pool (fork: cheap start, nothing heavy to pickle)."""
    surfel_area_table((1.0, 1.0, 1.0))  # build the cached marching-cubes table once, before forking
    if workers <= 1 or len(pairs) <= 1:
        return [func(p) for p in progress(pairs, total=len(pairs), desc=desc)]
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork")) as pool:
        return list(progress(pool.map(func, pairs), total=len(pairs), desc=desc))


def evaluate_flare(pred_dir: str | Path, gt_dir: str | Path, *, workers: int = 2) -> dict[str, Any]:
    matching = match_cases(pred_dir, gt_dir)
    if matching.missing:
        log.warning("%d case(s) without a prediction score 0: %s", len(matching.missing), ", ".join(matching.missing[:5]))
    cases = run_cases(evaluate_case, matching.pairs, workers, "evaluate flare")
    for c in cases:
        if c.status == "failed":
            log.error("%s", c.error)
    settings = {
        "nsd_tolerance_mm": {FLARE22_LABELS[k]: v for k, v in FLARE22_NSD_TOLERANCE_MM.items()},
        "zrange_labels": sorted(FLARE22_LABELS[k] for k in FLARE22_ZRANGE_LABELS),
        "spacing": "ground-truth header",
        "rounding": DECIMALS,
    }
    return build_results("flare", METRICS, cases, unmatched=matching.unmatched, settings=settings)
