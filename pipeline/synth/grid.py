"""The voxel grid synthetic anatomy is drawn on: canonical LPS, mm coordinates, bounding boxes.

Physical points are (x, y, z) in mm with LPS axes (+x patient left, +y posterior, +z superior);
arrays are numpy (z, y, x) like everywhere else in segpipe. Every shape is evaluated only
inside its own bounding box, which is what keeps a 512×512×200 case at a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Box = tuple[slice, slice, slice]  # numpy (z, y, x)


@dataclass(frozen=True)
class Grid:
    shape: tuple[int, int, int]  # (nz, ny, nx)
    spacing: tuple[float, float, float]  # (sx, sy, sz) mm, ITK order
    origin: tuple[float, float, float]  # (x, y, z) mm of voxel (0, 0, 0)

    def axis(self, i: int) -> np.ndarray:
        """Voxel-centre coordinates (mm, float32) along physical axis i (0 = x, 1 = y, 2 = z)."""
        n = self.shape[2 - i]
        return (self.origin[i] + self.spacing[i] * np.arange(n, dtype=np.float64)).astype(np.float32)

    @property
    def extent(self) -> tuple[tuple[float, float], ...]:
        """(low, high) voxel-centre coordinate per physical axis."""
        return tuple((self.origin[i], self.origin[i] + self.spacing[i] * (self.shape[2 - i] - 1)) for i in range(3))

    def box(self, lo: np.ndarray, hi: np.ndarray) -> Box | None:
        """Smallest box holding every voxel centre in [lo, hi] (x, y, z mm); None if empty."""
        slices = []
        for i in range(3):
            n = self.shape[2 - i]
            a = int(np.ceil((lo[i] - self.origin[i]) / self.spacing[i] - 1e-6))
            b = int(np.floor((hi[i] - self.origin[i]) / self.spacing[i] + 1e-6)) + 1
            a, b = max(a, 0), min(b, n)
            if a >= b:
                return None
            slices.append(slice(a, b))
        return (slices[2], slices[1], slices[0])

    def coords(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable x, y, z coordinate arrays for the voxels of `box`."""
        x = self.axis(0)[box[2]][None, None, :]
        y = self.axis(1)[box[1]][None, :, None]
        z = self.axis(2)[box[0]][:, None, None]
        return x, y, z

    def voxel_volume(self) -> float:
        return float(np.prod(self.spacing))


def box_shape(box: Box) -> tuple[int, int, int]:
    return tuple(s.stop - s.start for s in box)  # type: ignore[return-value]


def box_union(a: Box, b: Box) -> Box:
    return tuple(slice(min(p.start, q.start), max(p.stop, q.stop)) for p, q in zip(a, b, strict=True))  # type: ignore[return-value]


def box_intersection(a: Box, b: Box) -> Box | None:
    out = tuple(slice(max(p.start, q.start), min(p.stop, q.stop)) for p, q in zip(a, b, strict=True))
    return None if any(s.start >= s.stop for s in out) else out  # type: ignore[return-value]


def box_within(inner: Box, outer: Box) -> Box:
    """`inner` expressed relative to `outer` (inner must lie inside outer)."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer, strict=True))  # type: ignore[return-value]
