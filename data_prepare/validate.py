"""Read and validate one case: every check that can reject it, with a one-line reason.

A case is rejected (CaseError) when a file is unreadable, not 3D, not finite, when its
modalities disagree on size/spacing/origin/direction beyond the tolerance, when the label's
grid differs from the images', or when the label holds a value outside the case's explicit
label map (BraTS legacy 4 → 3 is in that map; nothing is guessed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from data_prepare.layouts import CaseSource
from pipeline.case_images import CanonicalGrid, read_case_file, read_case_images
from pipeline.errors import CaseError
from pipeline.fsutil import sha256_file
from pipeline.image_io import Geometry, Reorientation


@dataclass
class LoadedCase(CanonicalGrid):
    source: CaseSource
    channels: dict[str, np.ndarray | None]  # canonical (z, y, x), raw dtype; None = missing
    label: np.ndarray | None  # canonical (z, y, x) uint8, internal ids
    reorientation: Reorientation
    files: dict[str, dict[str, Any]]  # role → {path, sha256, bytes}
    label_voxels: dict[str, int]  # internal label id → voxel count


def file_info(path: Path) -> dict[str, Any]:
    st = os.stat(path)
    return {"path": str(path), "bytes": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "sha256": sha256_file(path)}


def _label_array(source: CaseSource, image: sitk.Image) -> np.ndarray:
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f":
        if not np.array_equal(array, np.round(array)):
            raise CaseError(source.case_id, "label has non-integer values")
        array = array.astype(np.int64)
    return array


def map_labels(source: CaseSource, array: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Raw label values → internal uint8 ids through the explicit map; unknown values reject the case."""
    lo, hi = int(array.min()), int(array.max())
    if lo >= 0 and hi < 1 << 16:
        flat = array.reshape(-1)
        counts = np.zeros(hi + 1, np.int64)
        for start in range(0, flat.size, 1 << 22):  # chunks bound bincount's intp copy
            counts += np.bincount(flat[start:start + (1 << 22)], minlength=hi + 1)
        values = np.flatnonzero(counts)
    else:
        values, counts_u = np.unique(array, return_counts=True)
        counts = dict(zip(values.tolist(), counts_u.tolist(), strict=True))  # type: ignore[assignment]
    unknown = sorted(int(v) for v in values if int(v) not in source.label_map)
    if unknown:
        allowed = sorted(source.label_map)
        hint = ("; 4 is the BraTS 2024+ resection cavity: set task.label_convention: brats2024 to use it"
                if source.label_convention == "brats-2023" and 4 in unknown else "")
        raise CaseError(source.case_id,
                        f"label values {unknown} are not in the {source.label_convention} label set {allowed}{hint}")
    lut = np.zeros(hi + 1, np.uint8)
    for raw, internal in source.label_map.items():
        if 0 <= raw <= hi:
            lut[raw] = internal
    mapped = lut[array]
    voxels: dict[str, int] = {}
    for v in values:
        key = str(source.label_map[int(v)])
        voxels[key] = voxels.get(key, 0) + int(counts[int(v)])
    return mapped, voxels


def load_case(source: CaseSource, tolerance: float) -> LoadedCase:
    images = read_case_images(source.case_id, source.images, tolerance)
    files = {m: file_info(p) for m, p in source.images.items() if p is not None}
    label, voxels = None, {}
    if source.label is not None:
        label_image = read_case_file(source.case_id, "label", source.label)
        diffs = images.geometry.differences(Geometry.of(label_image), tolerance)
        if diffs:
            raise CaseError(source.case_id, f"label grid differs from the image: {'; '.join(diffs)}")
        mapped, voxels = map_labels(source, _label_array(source, label_image))
        del label_image
        label = images.reorientation.array_to_canonical(mapped)
        files["label"] = file_info(source.label)
    return LoadedCase(source, images.channels, label, images.reorientation, files, voxels)
