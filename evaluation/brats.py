"""BraTS Dice and HD95 per region (ET, TC, WT), in the two eras' conventions.

- `legacy` (2017–2022, CaPTk as nnU-Net reimplemented it in Task082_BraTS_2020): labels
  1/2/4; Dice with both-empty → 1, one-empty → 0; HD95 = medpy's voxel-boundary pooled
  95th percentile, both-empty → 0, one-empty → 373.12866 (the 240×240×155 diagonal).
  Spacing comes from the ground-truth header (1 mm on BraTS data, so identical to nnU-Net's
  hard-coded (1, 1, 1)).
- `2023` (rachitsaluja/BraTS-2023-Metrics): labels 1/2/3; "legacy" full-volume Dice and
  DeepMind HD95 with `inf` → 374; with `lesionwise`, the ranking metrics: 26-connected GT
  lesions merged by dilation, lesions at or below a volume threshold dropped, every false-
  positive component adding Dice 0 / HD95 374, no lesions at all → Dice 1 / HD95 0.
- `2025` (the organisers' `brats-evaluation` package): regions ET, TC, WT, NETC, SNFH, RC with
  global and lesion-wise DSC/NSD/HD95 and TP/FP/FN, always lesion-wise (evaluation/brats2025.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from evaluation import brats2025
from evaluation.flare import run_cases
from evaluation.matching import CasePair, match_cases
from evaluation.results import CaseResult, build_results
from evaluation.surface import grow_box, hd95_voxel, robust_hausdorff, surface_distances, union_box
from pipeline.errors import CaseError, SegpipeError
from pipeline.image_io import Geometry, read_image
from pipeline.log import get_logger
from pipeline.tasks import BRATS_REGIONS_2023, BRATS_REGIONS_2025, BRATS_REGIONS_LEGACY

log = get_logger("evaluate.brats")

REGIONS: dict[str, dict[str, tuple[int, ...]]] = {
    "legacy": BRATS_REGIONS_LEGACY, "2023": BRATS_REGIONS_2023, "2025": BRATS_REGIONS_2025,
}
REGION_ORDER = ("ET", "TC", "WT")
LEGACY_HD95_EMPTY = 373.12866
HD95_PENALTY_2023 = 374.0


@dataclass(frozen=True)
class LesionRule:
    dilation: int  # iterations of the 18-neighbourhood dilation that merges nearby GT lesions
    min_volume_mm3: float  # GT lesions at or below this volume are left out of the average


# per sub-challenge, from the 2023 metrics code
LESION_RULES: dict[str, LesionRule] = {
    "GLI": LesionRule(3, 50),
    "SSA": LesionRule(3, 50),
    "PED": LesionRule(3, 50),
    "MEN": LesionRule(1, 50),
    "MET": LesionRule(1, 2),
}
_DILATION_STRUCT = ndimage.generate_binary_structure(3, 2)


def legacy_scores(gt: np.ndarray, pred: np.ndarray, spacing: tuple[float, ...]) -> tuple[float, float]:
    n_gt, n_pred = int(np.count_nonzero(gt)), int(np.count_nonzero(pred))
    if n_gt == 0:
        return (1.0, 0.0) if n_pred == 0 else (0.0, LEGACY_HD95_EMPTY)
    if n_pred == 0:
        return 0.0, LEGACY_HD95_EMPTY
    dsc = 2.0 * int(np.count_nonzero(gt & pred)) / (n_gt + n_pred)
    return dsc, hd95_voxel(pred, gt, spacing)


def full_scores_2023(gt: np.ndarray, pred: np.ndarray, spacing: tuple[float, ...]) -> tuple[float, float]:
    n_gt, n_pred = int(np.count_nonzero(gt)), int(np.count_nonzero(pred))
    if n_gt == 0 and n_pred == 0:
        return 1.0, 0.0
    dsc = 2.0 * int(np.count_nonzero(gt & pred)) / (n_gt + n_pred)
    hd = robust_hausdorff(surface_distances(gt, pred, spacing), 95)
    return dsc, (HD95_PENALTY_2023 if math.isinf(hd) else hd)


def lesionwise_scores(gt: np.ndarray, pred: np.ndarray, spacing: tuple[float, ...], rule: LesionRule) -> dict[str, Any]:
    """Lesion-wise Dice / HD95 and the lesion counts for one region."""
    import cc3d

    voxel_mm3 = float(np.prod(spacing))
    merged = ndimage.binary_dilation(gt, structure=_DILATION_STRUCT, iterations=rule.dilation)
    merged_cc, n_lesions = cc3d.connected_components(merged, connectivity=26, return_N=True)
    lesions = np.where(gt, merged_cc, 0)
    pred_cc, n_pred = cc3d.connected_components(pred, connectivity=26, return_N=True)
    lesion_boxes = ndimage.find_objects(lesions, max_label=n_lesions)
    pred_boxes = ndimage.find_objects(pred_cc, max_label=n_pred)
    matched: set[int] = set()
    dice_sum = hd_sum = 0.0
    kept = n_tp = n_fn = 0
    for lesion in range(1, n_lesions + 1):
        box = lesion_boxes[lesion - 1]
        assert box is not None
        around = grow_box(box, rule.dilation, gt.shape)
        reach = ndimage.binary_dilation(lesions[around] == lesion, structure=_DILATION_STRUCT, iterations=rule.dilation)
        hits = np.unique(pred_cc[around][reach])
        hits = hits[hits != 0]
        matched.update(int(h) for h in hits)
        crop = union_box(box, *(pred_boxes[int(h) - 1] for h in hits))
        assert crop is not None
        g = lesions[crop] == lesion
        p = np.isin(pred_cc[crop], hits)
        n_g = int(np.count_nonzero(g))
        if n_g * voxel_mm3 <= rule.min_volume_mm3:
            continue
        kept += 1
        n_tp += int(hits.size > 0)
        n_fn += int(hits.size == 0)
        dice_sum += 2.0 * int(np.count_nonzero(g & p)) / (n_g + int(np.count_nonzero(p)))
        hd = robust_hausdorff(surface_distances(g, p, spacing), 95)
        hd_sum += HD95_PENALTY_2023 if math.isinf(hd) else hd
    n_fp = n_pred - len(matched)
    denominator = kept + n_fp
    if denominator == 0:
        return {"lesionwise_dice": 1.0, "lesionwise_hd95": 0.0, "n_tp": 0, "n_fp": 0, "n_fn": 0}
    return {
        "lesionwise_dice": dice_sum / denominator,
        "lesionwise_hd95": (hd_sum + HD95_PENALTY_2023 * n_fp) / denominator,
        "n_tp": n_tp,
        "n_fp": n_fp,
        "n_fn": n_fn,
    }


def metrics_for(convention: str, lesionwise: bool) -> list[str]:
    if convention == "2025":
        return list(brats2025.METRICS)
    return ["dice", "hd95"] + (["lesionwise_dice", "lesionwise_hd95"] if lesionwise else [])


def penalty_labels(convention: str, lesionwise: bool) -> dict[str, dict[str, Any]]:
    if convention == "2025":
        return brats2025.penalty_labels()
    hd = LEGACY_HD95_EMPTY if convention == "legacy" else HD95_PENALTY_2023
    out: dict[str, dict[str, Any]] = {}
    for name in REGION_ORDER:
        entry: dict[str, Any] = {"id": list(REGIONS[convention][name]), "dice": 0.0, "hd95": hd}
        if lesionwise:
            entry |= {"lesionwise_dice": 0.0, "lesionwise_hd95": HD95_PENALTY_2023}
        out[name] = entry
    return out


def _read(path: Path) -> tuple[np.ndarray, tuple[float, ...], Geometry]:
    image = read_image(path)
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    return sitk.GetArrayFromImage(image), spacing, Geometry.of(image)  # a copy: a view dies with `image`


def case_labels(
    gt: np.ndarray, pred: np.ndarray, spacing: tuple[float, ...], convention: str, rule: LesionRule | None
) -> dict[str, dict[str, Any]]:
    if convention == "2025":
        # the package pairs sitk's (x, y, z) spacing with the (z, y, x) array: reproduced (1 mm BraTS: no effect)
        return brats2025.case_labels(gt, pred, tuple(reversed(spacing)))
    out: dict[str, dict[str, Any]] = {}
    for name in REGION_ORDER:
        labels = REGIONS[convention][name]
        g, p = np.isin(gt, labels), np.isin(pred, labels)
        scorer = legacy_scores if convention == "legacy" else full_scores_2023
        dsc, hd = scorer(g, p, spacing)
        entry: dict[str, Any] = {"id": list(labels), "dice": dsc, "hd95": hd}
        if rule is not None:
            entry |= lesionwise_scores(g, p, spacing, rule)
        out[name] = entry
    return out


def evaluate_case(pair: CasePair, *, convention: str, rule: LesionRule | None) -> CaseResult:
    lesionwise = rule is not None
    if pair.pred is None:
        return CaseResult(pair.case, penalty_labels(convention, lesionwise), status="missing")
    try:
        gt, spacing, gt_geo = _read(pair.gt)
        pred, _, pred_geo = _read(pair.pred)
        if gt.shape != pred.shape:
            raise CaseError(pair.case, f"prediction size {pred_geo.size} differs from ground truth {gt_geo.size}")
        allowed = {0, *(v for labels in REGIONS[convention].values() for v in labels)}
        foreign = sorted(set(np.unique(pred).tolist()) - allowed)
        result = CaseResult(pair.case, case_labels(gt, pred, spacing, convention, rule))
        warnings = [f"{d} (scored with the ground truth's spacing)" for d in gt_geo.differences(pred_geo)]
        if foreign:
            warnings.append(f"prediction has labels {foreign} outside the {convention} convention {sorted(allowed)}")
        if warnings:
            result.extra["warnings"] = warnings
        return result
    except SegpipeError as exc:
        return CaseResult(pair.case, penalty_labels(convention, lesionwise), status="failed", error=str(exc))


def evaluate_brats(
    pred_dir: str | Path,
    gt_dir: str | Path,
    *,
    convention: str = "2023",
    lesionwise: bool = False,
    challenge: str = "GLI",
    workers: int = 2,
) -> dict[str, Any]:
    if convention not in REGIONS:
        raise SegpipeError(f"unknown BraTS convention {convention!r}; use legacy, 2023 or 2025")
    rule = LESION_RULES[challenge] if lesionwise and convention != "2025" else None
    matching = match_cases(pred_dir, gt_dir)
    if matching.missing:
        log.warning("%d case(s) without a prediction get the penalty: %s", len(matching.missing), ", ".join(matching.missing[:5]))
    cases = run_cases(partial(evaluate_case, convention=convention, rule=rule), matching.pairs, workers, "evaluate brats")
    for c in cases:
        if c.status == "failed":
            log.error("%s", c.error)
    hd95 = {"legacy": "medpy voxel-boundary, pooled percentile",
            "2023": "DeepMind surfels, 374 if undefined",
            "2025": "panoptica (medpy voxel-boundary, pooled percentile), 373 if infinite"}[convention]
    settings: dict[str, Any] = {
        "convention": convention,
        "regions": {k: list(v) for k, v in REGIONS[convention].items()},
        "hd95": hd95,
    }
    if convention == "2025":
        settings["lesionwise"] = {"instances": "26-connected components", "matching": "one-to-one, DSC >= 1e-6",
                                  "nsd_tolerance": "min(spacing)", "absent_from_both": None}
    if rule is not None:
        settings["lesionwise"] = {"challenge": challenge, "dilation": rule.dilation, "min_volume_mm3": rule.min_volume_mm3}
    return build_results(f"brats-{convention}", metrics_for(convention, rule is not None), cases, unmatched=matching.unmatched, settings=settings)
