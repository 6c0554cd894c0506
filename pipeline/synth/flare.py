"""FLARE22-like abdominal CT: scan geometry, anatomy, HU synthesis (in memory, canonical LPS).

Sizes
- full:  512×512 in-plane at 0.6–0.9 mm, 80–200 slices of 2–5 mm (a clinical scan).
- small: 128×128 in-plane at 2.8–3.3 mm, 48–64 slices of 4.5–5.5 mm (CI/CPU training); the
         field of view is realistic, so organs keep their size in mm and the smallest ones
         (adrenals, esophagus, gallbladder) stay ≥ 3 voxels across.
The z-range always holds the 13 organs; vessels and the esophagus run out of it, as in FLARE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline.image_io import Geometry
from pipeline.synth.ct_body import draw_body, plan_body
from pipeline.synth.ct_organs import draw_organs
from pipeline.synth.ct_tissues import LABEL_OF, N_TISSUES, T, hu_table
from pipeline.synth.grid import Grid
from pipeline.synth.noise import cosine_field, rng_for
from pipeline.tasks import FLARE22_LABELS

HU_MIN, HU_MAX = -1024, 3071


@dataclass(frozen=True)
class FlareSize:
    inplane: int
    spacing_xy: tuple[float, float]
    slices: tuple[int, int]
    spacing_z: tuple[float, ...]  # choices, as scanners reconstruct at fixed thicknesses
    noise_sd: tuple[float, float]  # HU, before the in-plane reconstruction kernel


SIZES: dict[str, FlareSize] = {
    "full": FlareSize(512, (0.6, 0.9), (80, 200), (2.0, 2.5, 3.0, 4.0, 5.0), (22.0, 48.0)),
    "small": FlareSize(128, (2.8, 3.3), (48, 64), (4.5, 5.0, 5.5), (8.0, 18.0)),
}
# organs must fit between these heights relative to the diaphragm dome (mm)
REQUIRED_SPAN = (-228.0, 24.0)
# plausible organ volumes (mm³) for checks: a generated case outside them is a generator bug
PLAUSIBLE_VOLUME_MM3: dict[int, tuple[float, float]] = {
    1: (800e3, 2600e3), 2: (60e3, 260e3), 3: (60e3, 450e3), 4: (25e3, 160e3), 5: (10e3, 250e3),
    6: (10e3, 200e3), 7: (1.5e3, 16e3), 8: (1.5e3, 16e3), 9: (5e3, 80e3), 10: (2e3, 60e3),
    11: (100e3, 1100e3), 12: (25e3, 250e3), 13: (60e3, 260e3),
}


@dataclass
class FlareCase:
    """One synthetic CT in canonical LPS orientation (arrays are numpy (z, y, x))."""

    image: np.ndarray  # int16 HU
    label: np.ndarray  # uint8, FLARE22 ids 0..13
    geometry: Geometry  # canonical grid (identity direction), ITK order
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        sx, sy, sz = self.geometry.spacing
        return (sz, sy, sx)

    def organ_volumes_mm3(self) -> dict[str, float]:
        counts = np.bincount(self.label.ravel(), minlength=14)
        voxel = float(np.prod(self.geometry.spacing))
        return {name: float(counts[i]) * voxel for i, name in FLARE22_LABELS.items()}


def _scan_geometry(size: FlareSize, plan, rng: np.random.Generator) -> tuple[Grid, np.ndarray]:
    """Grid in the anatomical frame plus the world offset (table position) of that frame."""
    sxy = float(rng.uniform(*size.spacing_xy))
    sz = float(rng.choice(size.spacing_z))
    need = REQUIRED_SPAN[1] - REQUIRED_SPAN[0]
    lo_n, hi_n = size.slices
    min_n = max(lo_n, int(np.ceil(need / sz)) + 1)
    extent = rng.uniform(need + 10, need + 260)
    nz = int(np.clip(round(extent / sz), min_n, max(hi_n, min_n)))
    slack = (nz - 1) * sz - need
    bottom = plan.dome + REQUIRED_SPAN[0] - rng.uniform(0.15, 0.85) * slack
    n = size.inplane
    fov = (n - 1) * sxy
    y_front = -(plan.bc + plan.muscle + plan.fat[1])
    y_back = plan.cavity_back + plan.muscle + 42 + plan.fat[2]
    x0 = -fov / 2 + rng.uniform(-12, 12)
    y0 = (y_front + y_back) / 2 - fov / 2 + rng.uniform(-10, 15)
    grid = Grid((nz, n, n), (sxy, sxy, sz), (float(x0), float(y0), float(bottom)))
    world = np.array([rng.uniform(-30, 30), rng.uniform(-60, 60) + 150.0, rng.uniform(-1200, -300)])
    return grid, world


def make_flare_case(seed: int, size: str = "small") -> FlareCase:
    """Deterministic synthetic FLARE22 case for `seed` (same seed → byte-identical arrays)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    spec = SIZES[size]
    plan = plan_body(rng_for(seed, 1))
    grid, world = _scan_geometry(spec, plan, rng_for(seed, 2))
    tissue = np.empty(grid.shape, dtype=np.uint8)
    draw_body(tissue, grid, plan, rng_for(seed, 3))
    landmarks = draw_organs(tissue, grid, plan, rng_for(seed, 4))
    image, scan = _synthesize_hu(tissue, grid, spec, rng_for(seed, 5))
    label = LABEL_OF[tissue]
    geometry = Geometry(
        size=(grid.shape[2], grid.shape[1], grid.shape[0]),
        spacing=tuple(float(s) for s in grid.spacing),  # type: ignore[arg-type]
        origin=tuple(float(o + w) for o, w in zip(grid.origin, world, strict=True)),  # type: ignore[arg-type]
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    )
    info = {"seed": int(seed), "size": size, "scan": scan, "landmarks_mm": landmarks,
            "body": {"cavity_half_width_mm": plan.ac, "cavity_half_depth_mm": plan.bc, "subcutaneous_fat_mm": list(plan.fat)}}
    return FlareCase(image, label, geometry, info)


def _synthesize_hu(tissue: np.ndarray, grid: Grid, spec: FlareSize, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Tissue map → HU: per-case contrast phase, organ texture, reconstruction blur, noise, cupping.

    Works slice by slice: every step is in-plane (the texture is separable in z), and
    1 MB slices stay in cache where whole-volume temporaries would not.
    """
    table, scan = hu_table(rng)
    amplitude = np.zeros(N_TISSUES, dtype=np.float32)  # smooth texture, scaled per tissue
    amplitude[[T.LIVER, T.SPLEEN, T.RIGHT_KIDNEY, T.LEFT_KIDNEY, T.MUSCLE, T.HEART]] = rng.uniform(3, 8)
    amplitude[[T.PANCREAS, T.STOMACH, T.DUODENUM, T.BOWEL_WALL, T.MYOCARDIUM]] = rng.uniform(5, 12)
    amplitude[[T.SUBCUT_FAT, T.VISCERAL_FAT]] = rng.uniform(4, 10)
    amplitude[[T.LUNG, T.STOOL]] = rng.uniform(25, 60)
    amplitude[[T.MARROW]] = rng.uniform(20, 50)
    x, y, z = grid.axis(0), grid.axis(1), grid.axis(2)
    planes, heights = [], []
    for _ in range(2):  # Σ cos(kx·x)cos(ky·y)·cos(kz·z): separable smooth texture
        k = 2 * np.pi / rng.uniform(25.0, 70.0, size=3)
        ph = rng.uniform(0, 2 * np.pi, size=3)
        planes.append((np.cos(k[1] * y + ph[1])[:, None] * np.cos(k[0] * x + ph[0])[None, :] * 2.0).astype(np.float32))
        heights.append(np.cos(k[2] * z + ph[2]).astype(np.float32) * np.float32(np.sqrt(2.0)))
    sd = np.float32(rng.uniform(*spec.noise_sd))
    xx, yy = x[None, :], y[:, None]
    cupping = np.float32(rng.uniform(-18, 12)) * (xx * xx + yy * yy) / np.float32(200.0**2)
    cupping = cupping + np.float32(rng.uniform(-6, 6)) * np.cos(xx / np.float32(90.0) + np.float32(rng.uniform(0, 6.3)))
    drift = np.cumsum(rng.normal(0, 0.6, size=grid.shape[0])).astype(np.float32)
    outside = None
    if rng.random() < 0.6:  # outside the reconstruction circle scanners write a constant
        half = np.float32((grid.shape[2] - 1) * grid.spacing[0] / 2)
        outside = ((xx - x[0] - half) ** 2 + (yy - y[0] - half) ** 2) > half * half
        scan["outside_fov_hu"] = HU_MIN
    noise_rng = rng_for(int(rng.integers(2**62)), 0)
    kernel = np.array([0.25, 0.5, 0.25], dtype=np.float32)  # in-plane reconstruction kernel
    image = np.empty(tissue.shape, dtype=np.int16)
    for i in range(tissue.shape[0]):
        t = tissue[i]
        hu = table[t]
        hu += amplitude[t] * (planes[0] * heights[0][i] + planes[1] * heights[1][i])
        hu += noise_rng.standard_normal(size=t.shape, dtype=np.float32) * sd
        hu = ndimage.correlate1d(hu, kernel, axis=1, mode="nearest")
        hu = ndimage.correlate1d(hu, kernel, axis=0, mode="nearest")
        hu += np.where(t != T.AIR, cupping + drift[i], np.float32(0))
        if outside is not None:
            hu[outside] = HU_MIN
        np.rint(hu, out=hu)
        np.clip(hu, HU_MIN, HU_MAX, out=hu)
        image[i] = hu
    _pancreas_lobulation(image, tissue, grid, rng)
    scan["noise_sd_hu"] = round(float(sd) * 0.375, 2)  # after the kernel
    return image, scan


def _pancreas_lobulation(image: np.ndarray, tissue: np.ndarray, grid: Grid, rng: np.random.Generator) -> None:
    """Fat between pancreatic lobules: the texture that tells pancreas from bowel wall."""
    where = np.nonzero((tissue == T.PANCREAS).any(axis=(1, 2)))[0]
    if where.size == 0:
        return
    zs = slice(int(where[0]), int(where[-1]) + 1)
    sub_t = tissue[zs]
    rows = np.nonzero((sub_t == T.PANCREAS).any(axis=(0, 2)))[0]
    cols = np.nonzero((sub_t == T.PANCREAS).any(axis=(0, 1)))[0]
    box = (zs, slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    x, y, z = grid.coords(box)
    lobules = cosine_field(rng, x, y, z, wavelength=(6.0, 14.0), terms=3)
    mask = tissue[box] == T.PANCREAS
    fatty = np.float32(rng.uniform(15, 45))
    sub = image[box]
    sub -= np.where(mask, np.rint(np.clip(lobules - 0.4, 0, None) * fatty), np.float32(0)).astype(np.int16)
