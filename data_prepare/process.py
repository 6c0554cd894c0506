"""One case, end to end: validate → canonical → normalise → coarse and fine samples → record.

Runs inside a worker process; holds one full-size case in memory at a time. The returned record
is plain data (msgpack-able); the runner commits it to the index after the arrays are renamed.

The fine sample is stored with `fine_jitter_mm` of extra context around the nominal crop
(ROI box + `fine_margin_mm`), on the same voxel grid as the nominal crop: the nominal crop is an
exact integer sub-box of the stored array (`fine.nominal`), so `SampleStore.load(..., "fine")`
is a zero-copy slice and `SampleStore.fine_crop` can jitter the ROI without the raw image.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from data_prepare.layouts import CaseSource
from data_prepare.store import write_array
from data_prepare.validate import LoadedCase, load_case
from pipeline import preprocess as pp
from pipeline.case_index import SCHEMA_VERSION
from pipeline.config import PrepareSection
from pipeline.tasks import TaskSpec

PROCESSING_VERSION = 3  # bump when the arrays a given config produces change (2: sample format 2,
# 3: MRI z-scored in each modality's own foreground)
BODY_STRIDE = 2


def _box_list(box: Any) -> list[list[float]]:
    return [[float(v) if isinstance(v, float) else int(v) for v in axis] for axis in box]


def normalise(case: LoadedCase, task: TaskSpec, cfg: PrepareSection) -> tuple[np.ndarray, pp.IntBox, dict[str, Any]]:
    """Full-resolution normalised image [C, Z, Y, X], the body/brain box, the statistics."""
    shape = case.shape
    image = np.zeros((len(task.modalities), *shape), np.float32)
    if task.image_kind == "ct":
        raw = case.channels[task.modalities[0]]
        assert raw is not None
        body = pp.ct_body_mask(raw, cfg.ct_body_threshold, stride=BODY_STRIDE)
        sub = raw[:, ::BODY_STRIDE, ::BODY_STRIDE]
        mean, std = pp.ct_statistics(sub, cfg.ct_window, body if cfg.ct_stats == "body" and body.any() else None)
        image[0] = pp.normalize_ct(raw, cfg.ct_window, mean, std)
        sub_box = pp.bounding_box(body)
        if sub_box is None:
            box: pp.IntBox = ((0, shape[0]), (0, shape[1]), (0, shape[2]))
        else:
            box = (sub_box[0],
                   (sub_box[1][0] * BODY_STRIDE, min(sub_box[1][1] * BODY_STRIDE, shape[1])),
                   (sub_box[2][0] * BODY_STRIDE, min(sub_box[2][1] * BODY_STRIDE, shape[2])))
        stats = {"kind": "ct", "window": list(cfg.ct_window), "region": cfg.ct_stats, "mean": mean, "std": std,
                 "body_threshold": cfg.ct_body_threshold, "body_voxels_subsampled": int(body.sum())}
        return image, box, stats
    mask = pp.mri_brain_mask([case.channels[m] for m in task.modalities])
    per_modality: dict[str, Any] = {}
    for c, modality in enumerate(task.modalities):
        raw = case.channels[modality]
        if raw is None:
            per_modality[modality] = None  # missing: zeros, excluded from every statistic
            continue
        # each modality in its own foreground (as ShaSpec's `truncate`): with the union of the
        # present modalities, a channel's values would change with whichever others a case brings,
        # and training (all four) and inference (any subset) would normalise differently
        own = pp.mri_brain_mask([raw])
        mean, std = pp.mri_statistics(raw, own)
        image[c] = pp.normalize_mri(raw, own, mean, std)
        per_modality[modality] = {"mean": mean, "std": std, "voxels": int(own.sum())}
    found = pp.bounding_box(mask)
    box = found if found is not None else ((0, shape[0]), (0, shape[1]), (0, shape[2]))
    return image, box, {"kind": "mri", "region": "modality", "brain_voxels": int(mask.sum()), "modalities": per_modality}


def coarse_grid(shape: tuple[int, int, int], spacing: tuple[float, float, float], cfg: PrepareSection) -> tuple[int, int, int]:
    if cfg.coarse_size is not None:
        return tuple(int(v) for v in cfg.coarse_size)  # type: ignore[return-value]
    assert cfg.coarse_spacing is not None
    return pp.shape_for_spacing(shape, spacing, cfg.coarse_spacing)


def fine_grid(nominal: pp.IntBox, shape: tuple[int, int, int], spacing: tuple[float, float, float],
              cfg: PrepareSection) -> dict[str, Any]:
    """The stored fine grid: nominal crop at fine size/spacing, extended by whole fine voxels."""
    extent = [nominal[a][1] - nominal[a][0] for a in range(3)]
    if cfg.fine_size is not None:
        n = [int(v) for v in cfg.fine_size]
    else:
        assert cfg.fine_spacing is not None
        n = list(pp.shape_for_spacing(extent, spacing, cfg.fine_spacing))
    step = [extent[a] / n[a] for a in range(3)]  # canonical voxels per fine voxel
    fine_spacing = [step[a] * spacing[a] for a in range(3)]
    pads, region, stored = [], [], []
    for a in range(3):
        want = cfg.fine_jitter_mm / fine_spacing[a]
        lo = math.floor(min(want, nominal[a][0] / step[a]) + 1e-6)
        hi = math.floor(min(want, (shape[a] - nominal[a][1]) / step[a]) + 1e-6)
        pads.append((lo, hi))
        region.append((nominal[a][0] - lo * step[a], nominal[a][1] + hi * step[a]))
        stored.append(n[a] + lo + hi)
    return {
        "shape": stored, "spacing": fine_spacing, "region": region, "size": n,
        "nominal": [[pads[a][0], pads[a][0] + n[a]] for a in range(3)],
    }


def process_case(source: CaseSource, task: TaskSpec, cfg: PrepareSection, work: Path, fingerprint: str) -> dict[str, Any]:
    started = time.perf_counter()
    case = load_case(source, cfg.geometry_tolerance)
    shape, spacing = case.shape, case.spacing_zyx
    image, body_box, stats = normalise(case, task, cfg)
    case.channels = {}  # raw arrays no longer needed
    modality_mask = [source.images.get(m) is not None for m in task.modalities]
    record: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "processing": PROCESSING_VERSION,
        "fingerprint": fingerprint,
        "id": source.case_id,
        "task": task.name,
        "layout": source.layout,
        "group": source.group,
        "labeled": case.label is not None,
        "split": source.group,
        "fold": None,
        "sources": case.files,
        "label_convention": source.label_convention,
        "label_map": {str(k): int(v) for k, v in sorted(source.label_map.items())},
        "label_voxels": case.label_voxels,
        "modalities": list(task.modalities),
        "modality_mask": modality_mask,
        "geometry": case.reorientation.to_json(),
        "canonical_shape": list(shape),
        "canonical_spacing": list(spacing),
        "intensity": stats,
        "body_box": _box_list(body_box),
        "warnings": [],
    }
    work = Path(work)
    cid = source.case_id

    # coarse: the whole canonical volume
    c_shape = coarse_grid(shape, spacing, cfg)
    coarse = {"shape": list(c_shape), "spacing": list(pp.spacing_of_resized(spacing, shape, c_shape)),
              "region": _box_list(tuple((0.0, float(n)) for n in shape))}
    storage = cfg.sample_storage
    coarse["image"] = write_array(work, "coarse", cid, "image", pp.resample_linear(image, c_shape), storage)
    if case.label is not None:
        lab = pp.resample_labels(case.label, c_shape, method=cfg.label_resampling)
        coarse["label"] = write_array(work, "coarse", cid, "label", lab, storage)
    record["coarse"] = coarse

    # fine: ROI box + nominal margin, stored with the jitter allowance
    fg_box = pp.bounding_box(case.label) if case.label is not None else None
    record["foreground_box"] = _box_list(fg_box) if fg_box is not None else None
    if case.label is not None and cfg.fine_roi == "foreground" and fg_box is not None:
        roi, roi_kind = fg_box, "foreground"
    else:
        roi, roi_kind = body_box, "body"
        if case.label is not None and fg_box is None:
            record["warnings"].append("label is empty: fine sample cropped to the body box")
    nominal = pp.expand_box_mm(roi, cfg.fine_margin_mm, spacing, shape)
    grid = fine_grid(nominal, shape, spacing, cfg)
    fine: dict[str, Any] = {"roi": roi_kind, "roi_box": _box_list(roi), "margin_mm": cfg.fine_margin_mm,
                            "jitter_mm": cfg.fine_jitter_mm, "box": _box_list(nominal), **grid}
    fine["image"] = write_array(work, "fine", cid, "image",
                                pp.resample_linear(image, grid["shape"], tuple(grid["region"])), storage)
    del image
    if case.label is not None:
        lab = pp.resample_labels(case.label, grid["shape"], tuple(grid["region"]), method=cfg.label_resampling)
        fine["label"] = write_array(work, "fine", cid, "label", lab, storage)
    record["fine"] = fine
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record
