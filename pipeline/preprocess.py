"""Pure preprocessing functions that training data and inference must apply identically.

Everything here works on numpy arrays in canonical (z, y, x) order (see pipeline.image_io) and
has no I/O, so `prepare` and `predict` import the same code and cannot drift apart.

Coordinate convention (the one `torch.nn.functional.interpolate(..., align_corners=False)`
uses): voxel i covers the half-open interval [i, i+1) in *edge coordinates* and its centre is
i + 0.5. A box is `((z0, z1), (y0, y1), (x0, x1))` in edge coordinates of a grid, half-open,
ints for crops and floats where a box is mapped between grids. Resampling the region [a, b)
of an axis to n voxels samples the input at edge coordinates a + (j + 0.5)(b − a)/n, so
resizing a whole array (a=0, b=N) equals torch's trilinear/nearest-exact with
align_corners=False and a box maps between grids by scaling its edges.

Order of operations (prepare and predict alike): intensity-normalise at full resolution
(statistics need the full-resolution body/brain mask), then resample.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Box = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]
IntBox = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

CT_BODY_THRESHOLD_HU = -500.0  # air is about -1000 HU, fat about -100 HU
_EPS_STD = 1e-6


# intensity ------------------------------------------------------------------------------
def ct_statistics(array: np.ndarray, window: Sequence[float], mask: np.ndarray | None = None) -> tuple[float, float]:
    """Mean and std of the window-clipped HU values (inside `mask` when given)."""
    values = array[mask] if mask is not None else array.ravel()
    if values.size == 0:
        values = array.ravel()
    clipped = np.clip(values.astype(np.float32, copy=False), window[0], window[1])
    return float(clipped.mean(dtype=np.float64)), float(clipped.std(dtype=np.float64))


def normalize_ct(array: np.ndarray, window: Sequence[float], mean: float, std: float) -> np.ndarray:
    """Clip to the HU window, then z-score with the case statistics (float32)."""
    out = np.clip(array.astype(np.float32, copy=True), window[0], window[1])
    out -= np.float32(mean)
    out /= np.float32(max(std, _EPS_STD))
    return out


def mri_brain_mask(channels: Sequence[np.ndarray | None]) -> np.ndarray:
    """Voxels that are non-zero in any present modality (BraTS data are skull-stripped): of one
    modality, its own foreground (its statistics region); of all present ones, the brain box."""
    present = [c for c in channels if c is not None]
    if not present:
        raise ValueError("no modality present")
    mask = present[0] != 0
    for c in present[1:]:
        mask |= c != 0
    return mask


def mri_statistics(array: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Mean and std of one modality inside `mask` (its own foreground, data_prepare.process)."""
    values = array[mask].astype(np.float64) if mask.any() else array.astype(np.float64).ravel()
    return float(values.mean()), float(values.std())


def normalize_mri(array: np.ndarray, mask: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Z-score inside `mask`, exactly 0 outside (float32)."""
    out = array.astype(np.float32, copy=True)
    out -= np.float32(mean)
    out /= np.float32(max(std, _EPS_STD))
    out[~mask] = 0.0
    return out


# masks and boxes -------------------------------------------------------------------------
def ct_body_mask(array: np.ndarray, threshold: float = CT_BODY_THRESHOLD_HU, stride: int = 2) -> np.ndarray:
    """Largest connected component above `threshold` HU (the body; drops air, usually the table).

    Computed on an in-plane `stride` subsample and returned at that resolution: its only use is
    the body box and the statistics region, which tolerate a voxel of slack.
    """
    import cc3d

    sub = array[:, ::stride, ::stride] > threshold
    if not sub.any():
        return sub
    return cc3d.largest_k(sub, k=1, connectivity=6, delta=0) > 0


def upsample_mask_stride(mask: np.ndarray, shape: Sequence[int], stride: int = 2) -> np.ndarray:
    """Nearest upsampling of an in-plane stride-subsampled mask back to `shape`."""
    full = np.repeat(np.repeat(mask, stride, axis=1), stride, axis=2)
    return np.ascontiguousarray(full[:, : shape[1], : shape[2]])


def bounding_box(mask: np.ndarray) -> IntBox | None:
    """Half-open box ((lo, hi) per axis) of the non-zero voxels, or None for an empty mask.
    The one bounding box of segpipe (evaluation.surface crops with it too); any number of axes."""
    mask = np.asarray(mask)
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(np.any(mask, axis=other))
        if hit.size == 0:
            return None
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)  # type: ignore[return-value]


def expand_box_mm(box: Box, margin_mm: float | Sequence[float], spacing: Sequence[float],
                  shape: Sequence[int] | None = None) -> IntBox:
    """Grow `box` by `margin_mm` per side (rounded outward to whole voxels), clamped to `shape`.

    `spacing` is the voxel size (z, y, x) in mm of the grid `box` lives in.
    """
    margins = [float(margin_mm)] * 3 if np.isscalar(margin_mm) else [float(m) for m in margin_mm]  # type: ignore[arg-type]
    out = []
    for axis in range(3):
        pad = margins[axis] / float(spacing[axis])
        lo = int(np.floor(box[axis][0] - pad + 1e-6))
        hi = int(np.ceil(box[axis][1] + pad - 1e-6))
        if shape is not None:
            lo, hi = max(lo, 0), min(hi, int(shape[axis]))
        out.append((lo, hi))
    return tuple(out)  # type: ignore[return-value]


def scale_box(box: Box, from_shape: Sequence[int], to_shape: Sequence[int]) -> Box:
    """Map a box between two grids covering the same region (e.g. coarse ↔ canonical)."""
    return tuple(
        (box[a][0] * to_shape[a] / from_shape[a], box[a][1] * to_shape[a] / from_shape[a]) for a in range(3)
    )  # type: ignore[return-value]


def round_box_outward(box: Box, shape: Sequence[int] | None = None) -> IntBox:
    out = []
    for axis in range(3):
        lo, hi = int(np.floor(box[axis][0] + 1e-6)), int(np.ceil(box[axis][1] - 1e-6))
        if shape is not None:
            lo, hi = max(lo, 0), min(hi, int(shape[axis]))
        out.append((lo, max(hi, lo + 1)))
    return tuple(out)  # type: ignore[return-value]


# grids ---------------------------------------------------------------------------------
def spacing_of_resized(spacing: Sequence[float], in_extent: Sequence[float], out_shape: Sequence[int]) -> tuple[float, float, float]:
    """Voxel size (mm) after resampling `in_extent` voxels of `spacing` to `out_shape` voxels."""
    return tuple(float(spacing[a]) * float(in_extent[a]) / int(out_shape[a]) for a in range(3))  # type: ignore[return-value]


def shape_for_spacing(extent: Sequence[float], spacing: Sequence[float], target_spacing: Sequence[float]) -> tuple[int, int, int]:
    """Voxel count that covers `extent` voxels of `spacing` at (about) `target_spacing`."""
    return tuple(max(1, round(float(extent[a]) * float(spacing[a]) / float(target_spacing[a]))) for a in range(3))  # type: ignore[return-value]


# resampling ------------------------------------------------------------------------------
def _positions(n_in: int, lo: float, hi: float, n_out: int) -> np.ndarray:
    """Input index coordinates (voxel centres = integers) sampled by n_out outputs over [lo, hi)."""
    step = (hi - lo) / n_out
    return lo + (np.arange(n_out, dtype=np.float64) + 0.5) * step - 0.5


def _linear_axis(array: np.ndarray, axis: int, pos: np.ndarray) -> np.ndarray:
    n_in = array.shape[axis]
    pos = np.clip(pos, 0.0, n_in - 1)
    i0 = np.floor(pos).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = (pos - i0).astype(np.float32)
    shape = [1] * array.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    a0 = np.take(array, i0, axis=axis).astype(np.float32, copy=False)
    a1 = np.take(array, i1, axis=axis).astype(np.float32, copy=False)
    a1 -= a0
    a1 *= w
    a1 += a0
    return a1


def _axis_order(in_shape: Sequence[int], out_shape: Sequence[int]) -> list[int]:
    """Shrink the most-shrinking axis first so intermediates stay small."""
    return sorted(range(3), key=lambda a: out_shape[a] / in_shape[a])


def resample_linear(array: np.ndarray, out_shape: Sequence[int], region: Box | None = None) -> np.ndarray:
    """Trilinear resampling of `region` (default: the whole array) to `out_shape`, float32.

    Separable (one 1-D pass per axis), which is exact for trilinear interpolation. For the
    whole array this equals torch trilinear with align_corners=False (tested).
    """
    if region is None:
        region = tuple((0.0, float(n)) for n in array.shape[-3:])  # type: ignore[assignment]
    assert region is not None
    out = array
    lead = array.ndim - 3
    for axis in _axis_order([region[a][1] - region[a][0] for a in range(3)], out_shape):
        pos = _positions(array.shape[lead + axis], region[axis][0], region[axis][1], int(out_shape[axis]))
        out = _linear_axis(out, lead + axis, pos)
    return np.ascontiguousarray(out, dtype=np.float32)


def _nearest_index(n_in: int, lo: float, hi: float, n_out: int) -> np.ndarray:
    centre_edge = lo + (np.arange(n_out, dtype=np.float64) + 0.5) * (hi - lo) / n_out
    return np.clip(np.floor(centre_edge).astype(np.intp), 0, n_in - 1)


def resample_nearest(array: np.ndarray, out_shape: Sequence[int], region: Box | None = None) -> np.ndarray:
    """Nearest-neighbour resampling (torch 'nearest-exact' convention), dtype kept."""
    if region is None:
        region = tuple((0.0, float(n)) for n in array.shape[-3:])  # type: ignore[assignment]
    assert region is not None
    lead = array.ndim - 3
    idx = [_nearest_index(array.shape[lead + a], region[a][0], region[a][1], int(out_shape[a])) for a in range(3)]
    return np.ascontiguousarray(array[(Ellipsis, *np.ix_(*idx))])


def resample_labels(labels: np.ndarray, out_shape: Sequence[int], region: Box | None = None, *,
                    method: str = "nearest", vote: str = "argmax") -> np.ndarray:
    """Resample an integer label map without label bleeding (uint8 out).

    method "nearest": nearest neighbour. method "linear": every label is interpolated as its
    own binary map (only inside its bounding box, so cost scales with organ size) and each
    output voxel takes the label with the largest interpolated fraction, background included
    (vote "argmax"; 1 − Σ fractions is the background's share). vote "threshold" is the CSSN
    rule (fraction > 0.5, higher labels overwrite lower ones), kept for the measurement.
    """
    if method == "nearest":
        return resample_nearest(labels, out_shape, region).astype(np.uint8, copy=False)
    if method != "linear":
        raise ValueError(f"unknown label resampling method {method!r}")
    from scipy import ndimage

    if region is None:
        region = tuple((0.0, float(n)) for n in labels.shape)  # type: ignore[assignment]
    assert region is not None
    out_shape = tuple(int(v) for v in out_shape)
    pos = [np.clip(_positions(labels.shape[a], region[a][0], region[a][1], out_shape[a]), 0, labels.shape[a] - 1)
           for a in range(3)]
    result = np.zeros(out_shape, np.uint8)
    best = np.zeros(out_shape, np.float32)
    total = np.zeros(out_shape, np.float32) if vote == "argmax" else None
    slices = ndimage.find_objects(labels)
    for value, sl in enumerate(slices, start=1):
        if sl is None:
            continue
        # outputs whose interpolation support touches the label's box, and that support
        out_sl, sub_pos, in_sl = [], [], []
        for a in range(3):
            lo, hi = sl[a].start, sl[a].stop
            p = pos[a]
            hit = np.flatnonzero((p > lo - 1) & (p < hi))
            if hit.size == 0:
                break
            j0, j1 = int(hit[0]), int(hit[-1]) + 1
            i0 = max(int(np.floor(p[j0])), 0)
            i1 = min(int(np.floor(p[j1 - 1])) + 2, labels.shape[a])
            out_sl.append(slice(j0, j1))
            sub_pos.append(p[j0:j1] - i0)
            in_sl.append(slice(i0, i1))
        else:
            binary = (labels[tuple(in_sl)] == value).astype(np.float32)
            frac = binary
            for a in _axis_order(binary.shape, [len(sp) for sp in sub_pos]):
                frac = _linear_axis(frac, a, sub_pos[a])
            osl = tuple(out_sl)
            if vote == "threshold":
                result[osl][frac > 0.5] = value
                continue
            assert total is not None
            view_best, view_res = best[osl], result[osl]
            take = frac > view_best
            view_best[take] = frac[take]
            view_res[take] = value
            total[osl] += frac
    if vote == "argmax":
        assert total is not None
        result[best <= 1.0 - total] = 0  # background's share wins (ties go to background)
    return result
