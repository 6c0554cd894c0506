"""Coarse label map → region of interest for the fine stage (CSSN §1.4, re-derived).

1. Per class, the largest 26-connected component, kept if it reaches `min_volume_mm3`.
2. The union bounding box of the kept components, intersected with a z-window of ± `z_window_mm`
   around the centroid z of the largest kept component (CSSN's guard against a stray far-away
   component stretching the box).
3. Mapped to the canonical grid, then grown by `margin_mm` per side (the margin the fine samples
   were prepared with), clamped to the volume.
Boxes are half-open, (z, y, x), in the edge coordinates of pipeline.preprocess.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline import preprocess as pp


@dataclass(frozen=True)
class RoiResult:
    box: pp.IntBox | None  # canonical grid, margin included; None when nothing was found
    found: list[int]  # classes whose component was kept
    coarse_box: pp.IntBox | None  # coarse grid, before the margin


def locate(coarse_labels: np.ndarray, coarse_spacing: Sequence[float], *, min_volume_mm3: float = 1000.0,
           z_window_mm: float | None = 240.0) -> tuple[pp.IntBox | None, list[int]]:
    """Box (coarse grid) of the kept components and the classes kept."""
    import cc3d

    voxel = float(np.prod(coarse_spacing))
    min_vox = min_volume_mm3 / voxel
    keep = np.zeros(coarse_labels.shape, bool)
    found: list[int] = []
    biggest: tuple[int, float] | None = None  # (voxels, centroid z)
    for c in (int(v) for v in np.unique(coarse_labels) if v != 0):
        comp = cc3d.largest_k(coarse_labels == c, k=1, connectivity=26) > 0
        n = int(comp.sum())
        if n == 0 or n < min_vox:
            continue
        keep |= comp
        found.append(c)
        if biggest is None or n > biggest[0]:
            zs = np.flatnonzero(comp.any(axis=(1, 2)))
            weights = comp.sum(axis=(1, 2))[zs]
            biggest = (n, float((zs * weights).sum() / weights.sum()))
    box = pp.bounding_box(keep)
    if box is None or biggest is None:
        return None, []
    if z_window_mm is not None:
        half = z_window_mm / float(coarse_spacing[0])
        lo = max(box[0][0], int(np.floor(biggest[1] + 0.5 - half)))
        hi = min(box[0][1], int(np.ceil(biggest[1] + 0.5 + half)))
        if hi > lo:
            box = ((lo, hi), box[1], box[2])
    return box, found


def roi_from_coarse(coarse_labels: np.ndarray, canonical_shape: Sequence[int], canonical_spacing: Sequence[float], *,
                    margin_mm: float, min_volume_mm3: float = 1000.0, z_window_mm: float | None = 240.0) -> RoiResult:
    """The fine ROI in the canonical grid (see module docstring)."""
    cshape = coarse_labels.shape
    coarse_spacing = pp.spacing_of_resized(canonical_spacing, canonical_shape, cshape)
    cbox, found = locate(coarse_labels, coarse_spacing, min_volume_mm3=min_volume_mm3, z_window_mm=z_window_mm)
    if cbox is None:
        return RoiResult(None, [], None)
    scaled = pp.scale_box(cbox, cshape, canonical_shape)
    box = pp.expand_box_mm(scaled, margin_mm, canonical_spacing, canonical_shape)
    return RoiResult(box, found, cbox)
