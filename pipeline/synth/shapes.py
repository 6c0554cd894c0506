"""Implicit shapes on a Grid: perturbed ellipsoids, variable-radius tubes, CSG, painting.

A Field is a float32 array over a bounding box whose value is < 1 inside the shape and grows
roughly like distance / radius outside, so `value < 1 - wall/radius` gives a lumen and CSG is
min/max arithmetic. Labels are decided at voxel centres: no resampling, no blur.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.synth.grid import Box, Grid, box_intersection, box_shape, box_union, box_within
from pipeline.synth.noise import Wobble, no_wobble

FAR = np.float32(1e3)


@dataclass
class Field:
    box: Box
    value: np.ndarray  # float32, shape of box

    def inside(self, level: float = 1.0) -> np.ndarray:
        return self.value < level

    def volume_voxels(self, level: float = 1.0) -> int:
        return int(np.count_nonzero(self.value < level))


def ellipsoid(
    grid: Grid,
    center: np.ndarray,
    radii: np.ndarray,
    rotation: np.ndarray | None = None,
    wobble: Wobble | None = None,
) -> Field | None:
    """Ellipsoid with semi-axes `radii` (mm) along the columns of `rotation`, surface perturbed by `wobble`."""
    c = np.asarray(center, dtype=np.float64)
    a = np.asarray(radii, dtype=np.float64)
    r = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    w = wobble or no_wobble()
    half = np.sqrt(((r * a[None, :]) ** 2).sum(axis=1)) * (1.0 + w.bound) + 1e-3
    box = grid.box(c - half, c + half)
    if box is None:
        return None
    x, y, z = grid.coords(box)
    dx, dy, dz = x - np.float32(c[0]), y - np.float32(c[1]), z - np.float32(c[2])
    q = [
        np.float32(r[0, j] / a[j]) * dx + np.float32(r[1, j] / a[j]) * dy + np.float32(r[2, j] / a[j]) * dz
        for j in range(3)
    ]
    value = np.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2])
    if len(w.amp):
        value = value - w(*q)
    return Field(box, np.ascontiguousarray(np.broadcast_to(value, box_shape(box)), dtype=np.float32))


def catmull_rom(points: np.ndarray, values: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Smooth curve through `points` (N, 3) sampled about every `step` mm, `values` interpolated alongside."""
    p = np.asarray(points, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if len(p) < 2:
        return p, v
    ext = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    out_p, out_v = [], []
    for i in range(len(p) - 1):
        p0, p1, p2, p3 = ext[i], ext[i + 1], ext[i + 2], ext[i + 3]
        n = max(1, int(np.ceil(np.linalg.norm(p2 - p1) / step)))
        t = (np.arange(n) / n)[:, None]
        t2, t3 = t * t, t * t * t
        out_p.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t3))
        out_v.append(v[i] + (v[i + 1] - v[i]) * t[:, 0])
    out_p.append(p[-1:])
    out_v.append(v[-1:])
    return np.vstack(out_p), np.concatenate(out_v)


def tube(
    grid: Grid,
    points: np.ndarray,
    radii: np.ndarray,
    *,
    flatten: tuple[float, float] = (1.0, 1.0),
    step: float | None = None,
) -> Field | None:
    """Tube of varying radius along a smooth curve through `points`; `flatten` scales the x/y cross-section."""
    radii = np.asarray(radii, dtype=np.float64)
    step = step or max(1.0, 0.5 * float(radii.min()))
    cp, cr = catmull_rom(np.asarray(points, dtype=np.float64), radii, step)
    sx, sy = flatten
    scale = np.array([sx, sy, 1.0])
    segments = []
    whole: Box | None = None
    for i in range(max(1, len(cp) - 1)):
        a, b = cp[i], cp[min(i + 1, len(cp) - 1)]
        ra, rb = cr[i], cr[min(i + 1, len(cp) - 1)]
        reach = max(ra, rb) * scale
        seg_box = grid.box(np.minimum(a, b) - reach, np.maximum(a, b) + reach)
        if seg_box is None:
            continue
        segments.append((seg_box, a, b, ra, rb))
        whole = seg_box if whole is None else box_union(whole, seg_box)
    if whole is None:
        return None
    value = np.full(box_shape(whole), FAR, dtype=np.float32)
    inv = (1.0 / scale).astype(np.float32)
    for seg_box, a, b, ra, rb in segments:
        x, y, z = grid.coords(seg_box)
        px, py, pz = (x - np.float32(a[0])) * inv[0], (y - np.float32(a[1])) * inv[1], (z - np.float32(a[2])) * inv[2]
        d = (b - a) / scale
        dd = float(d @ d)
        if dd > 0:
            t = (px * np.float32(d[0] / dd) + py * np.float32(d[1] / dd) + pz * np.float32(d[2] / dd)).clip(0, 1)
        else:
            t = np.zeros((1, 1, 1), np.float32)
        ex, ey, ez = px - t * np.float32(d[0]), py - t * np.float32(d[1]), pz - t * np.float32(d[2])
        dist = np.sqrt(ex * ex + ey * ey + ez * ez)
        v = dist / (np.float32(ra) + t * np.float32(rb - ra))
        sub = value[box_within(seg_box, whole)]
        np.minimum(sub, v, out=sub)
    return Field(whole, value)


def union(*fields: Field | None) -> Field | None:
    present = [f for f in fields if f is not None]
    if not present:
        return None
    box = present[0].box
    for f in present[1:]:
        box = box_union(box, f.box)
    value = np.full(box_shape(box), FAR, dtype=np.float32)
    for f in present:
        sub = value[box_within(f.box, box)]
        np.minimum(sub, f.value, out=sub)
    return Field(box, value)


def subtract(a: Field | None, b: Field | None) -> Field | None:
    """Inside `a` and outside `b`."""
    if a is None or b is None:
        return a
    common = box_intersection(a.box, b.box)
    if common is None:
        return a
    value = a.value.copy()
    sub = value[box_within(common, a.box)]
    np.maximum(sub, 2.0 - b.value[box_within(common, b.box)], out=sub)
    return Field(a.box, value)


def paint(volume: np.ndarray, field: Field | None, value: int, *, level: float = 1.0, allow: np.ndarray | None = None) -> int:
    """Set `volume` to `value` inside the shape where `allow[current value]` (a bool lookup table) holds."""
    if field is None:
        return 0
    sub = volume[field.box]
    mask = field.value < level
    if allow is not None:
        mask &= allow[sub]
    sub[mask] = value
    return int(np.count_nonzero(mask))
