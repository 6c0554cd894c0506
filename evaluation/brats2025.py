"""BraTS 2025 scores, as the organisers' `brats-evaluation` package (panoptica, config `gli`)
computes them, for the regions ET, TC, WT, NETC, SNFH and RC (pipeline.tasks.BRATS_REGIONS_2025).

Per region, on the binary region masks:
- NSD and HD95 come from medpy-style boundary voxels (mask XOR its 6-connected erosion) and
  exact Euclidean distances: HD95 = 95th percentile of both directions pooled (`np.percentile`,
  interpolating), NSD = panoptica's (GaNDLF's) mean of the two directed fractions within a
  tolerance — not DeepMind's surface Dice;
- global DSC/NSD/HD95: the package passes no spacing here, so distances are in voxels and the
  NSD tolerance is 0.5 voxel (only coinciding boundary voxels count);
- lesions = 26-connected components of each mask (no dilation, no volume threshold), matched
  one-to-one by maximum bipartite matching on 1 − DSC among pairs with DSC ≥ 1e-6 (any
  overlap); lesion-wise DSC/NSD/HD95 are the means over the matched pairs only (panoptica's
  `sq_*`) with the spacing and an NSD tolerance of min(spacing); TP/FP/FN count matched pairs, unmatched predicted and unmatched reference lesions.
Edge cases follow the package: a region absent from both volumes gives NaN everywhere (None
here, `null` in JSON); one side empty, masks that do not overlap (global scores) or no matched
pair (lesion-wise scores) give DSC 0, NSD 0 and an infinite
HD95, which the organisers' parser reports as 373 (the SRI-24 grid's diagonal) — done here for
every HD95, lesion-wise included, since JSON has no infinity. A missing prediction scores 0 / 373.
The package reads the spacing with SimpleITK, i.e. in (x, y, z) order, and applies it to the
(z, y, x) array; callers pass it that way (evaluation/brats.py) — BraTS's 1 mm grid is unaffected.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from evaluation.surface import bounding_box, grow_box, union_box
from pipeline.tasks import BRATS_REGIONS_2025

REGION_ORDER = ("ET", "TC", "WT", "NETC", "SNFH", "RC")
HD95_INF = 373.0
MATCH_THRESHOLD = 1e-6  # panoptica MaxBipartiteMatching(matching_metric=DSC, matching_threshold=1e-6)
# the package computes the global metrics without the voxel spacing: voxel units, NSD within 0.5
GLOBAL_SPACING, GLOBAL_NSD_TOLERANCE = (1.0, 1.0, 1.0), 0.5
METRICS = ["dice", "nsd", "hd95", "lesionwise_dice", "lesionwise_nsd", "lesionwise_hd95"]
_FACE = ndimage.generate_binary_structure(3, 1)


def boundary_distances(ref: np.ndarray, pred: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(ref boundary → pred boundary, pred boundary → ref boundary) distances in mm; both masks
    non-empty. Computed inside the masks' joint bounding box grown by one voxel (same numbers)."""
    box = grow_box(union_box(bounding_box(ref), bounding_box(pred)), 1, ref.shape)  # type: ignore[arg-type]
    r, p = ref[box], pred[box]
    border_r = r ^ ndimage.binary_erosion(r, structure=_FACE, iterations=1)
    border_p = p ^ ndimage.binary_erosion(p, structure=_FACE, iterations=1)
    sampling = tuple(float(s) for s in spacing)
    ref_to_pred = ndimage.distance_transform_edt(~border_p, sampling=sampling)[border_r]
    pred_to_ref = ndimage.distance_transform_edt(~border_r, sampling=sampling)[border_p]
    return ref_to_pred, pred_to_ref


def pair_scores(ref: np.ndarray, pred: np.ndarray, spacing: tuple[float, ...], tol: float) -> tuple[float, float, float]:
    """(DSC, NSD at `tol`, HD95) of two non-empty masks."""
    n_ref, n_pred = int(np.count_nonzero(ref)), int(np.count_nonzero(pred))
    dsc = 2.0 * int(np.count_nonzero(ref & pred)) / (n_ref + n_pred)
    d_ref, d_pred = boundary_distances(ref, pred, spacing)
    tp_r, tp_p = np.sum(d_ref <= tol) / d_ref.size, np.sum(d_pred <= tol) / d_pred.size
    fp, fn = np.sum(d_ref > tol) / d_ref.size, np.sum(d_pred > tol) / d_pred.size
    nsd = float((tp_r + tp_p) / (tp_r + tp_p + fp + fn + sys.float_info.min))
    hd95 = float(np.percentile(np.hstack((d_ref, d_pred)), 95))
    return dsc, nsd, hd95


def match_lesions(ref_cc: np.ndarray, n_ref: int, pred_cc: np.ndarray, n_pred: int) -> list[tuple[int, int]]:
    """One-to-one (ref lesion, pred lesion) pairs maximising the summed DSC over overlapping pairs."""
    if n_ref == 0 or n_pred == 0:
        return []
    size_ref = np.bincount(ref_cc.ravel(), minlength=n_ref + 1)
    size_pred = np.bincount(pred_cc.ravel(), minlength=n_pred + 1)
    both = (ref_cc > 0) & (pred_cc > 0)
    joint = ref_cc[both].astype(np.int64) * (n_pred + 1) + pred_cc[both]
    pairs, overlap = np.unique(joint, return_counts=True)
    cost = np.full((n_ref, n_pred), 1.0 + 1e-6)
    for code, inter in zip(pairs.tolist(), overlap.tolist(), strict=True):
        r, p = divmod(code, n_pred + 1)
        dsc = 2.0 * inter / (size_ref[r] + size_pred[p])
        if dsc >= MATCH_THRESHOLD:
            cost[r - 1, p - 1] = 1.0 - dsc
    rows, cols = linear_sum_assignment(cost)
    return [(int(i) + 1, int(j) + 1) for i, j in zip(rows, cols, strict=True) if cost[i, j] < 1.0]


def region_scores(ref: np.ndarray, pred: np.ndarray, spacing: tuple[float, ...]) -> dict[str, Any]:
    """Global and lesion-wise scores of one region (boolean masks)."""
    import cc3d

    n_ref_vox, n_pred_vox = int(np.count_nonzero(ref)), int(np.count_nonzero(pred))
    out: dict[str, Any]
    if n_ref_vox == 0 and n_pred_vox == 0:
        return {**dict.fromkeys(METRICS), "n_tp": 0, "n_fp": 0, "n_fn": 0}
    if not np.any(ref & pred):  # the package's zero-TP edge case: also two disjoint masks
        out = {"dice": 0.0, "nsd": 0.0, "hd95": HD95_INF}
    else:
        dsc, nsd, hd95 = pair_scores(ref, pred, GLOBAL_SPACING, GLOBAL_NSD_TOLERANCE)
        out = {"dice": dsc, "nsd": nsd, "hd95": hd95}
    ref_cc, n_ref = cc3d.connected_components(ref, connectivity=26, return_N=True)
    pred_cc, n_pred = cc3d.connected_components(pred, connectivity=26, return_N=True)
    matches = match_lesions(ref_cc, n_ref, pred_cc, n_pred)
    scores = []
    if matches:
        ref_boxes = ndimage.find_objects(ref_cc, max_label=n_ref)
        pred_boxes = ndimage.find_objects(pred_cc, max_label=n_pred)
        for r, p in matches:
            crop = grow_box(union_box(ref_boxes[r - 1], pred_boxes[p - 1]), 1, ref.shape)  # type: ignore[arg-type]
            scores.append(pair_scores(ref_cc[crop] == r, pred_cc[crop] == p, spacing, min(spacing)))
    if scores:
        mean = np.mean(np.asarray(scores), axis=0)
        out |= {"lesionwise_dice": float(mean[0]), "lesionwise_nsd": float(mean[1]), "lesionwise_hd95": float(mean[2])}
    else:
        out |= {"lesionwise_dice": 0.0, "lesionwise_nsd": 0.0, "lesionwise_hd95": HD95_INF}
    return out | {"n_tp": len(matches), "n_fp": n_pred - len(matches), "n_fn": n_ref - len(matches)}


def case_labels(gt: np.ndarray, pred: np.ndarray, spacing: tuple[float, ...]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in REGION_ORDER:
        labels = BRATS_REGIONS_2025[name]
        out[name] = {"id": list(labels), **region_scores(np.isin(gt, labels), np.isin(pred, labels), spacing)}
    return out


def penalty_labels() -> dict[str, dict[str, Any]]:
    """What the organisers' parser gives a case without a prediction: 0, HD95 373, counts 0."""
    return {name: {"id": list(BRATS_REGIONS_2025[name]), "dice": 0.0, "nsd": 0.0, "hd95": HD95_INF,
                   "lesionwise_dice": 0.0, "lesionwise_nsd": 0.0, "lesionwise_hd95": HD95_INF,
                   "n_tp": 0, "n_fp": 0, "n_fn": 0} for name in REGION_ORDER}
