"""BraTS-like multi-modal brain MRI with a glioma, in memory, canonical LPS.

Each case warps the atlas (random scaling, rotation, smooth deformation and the tumour's mass
effect) into the BraTS grid, grows a tumour in the white matter (necrotic core inside an
enhancing rim inside edema that spreads along white matter), and renders four co-registered
contrasts from the tissue probabilities with per-case bias fields, Rician noise and scanner
gains. Backgrounds are exactly 0, as in skull-stripped BraTS data.

Sizes: full = 240×240×155 at 1 mm (the BraTS/SRI24 grid); small = 96×96×62 at 2.5 mm.
Labels are produced in the 2023 convention (1 NETC, 2 SNFH/edema, 3 ET).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from pipeline.image_io import Geometry
from pipeline.synth.atlas import Atlas, load_atlas
from pipeline.synth.grid import Grid
from pipeline.synth.noise import cosine_field, random_rotation, rng_for, wobble
from pipeline.synth.shapes import ellipsoid
from pipeline.tasks import BRATS_2023_TO_LEGACY, BRATS_LABELS, BRATS_MODALITIES

SIZES: dict[str, tuple[tuple[int, int, int], float]] = {
    "full": ((240, 240, 155), 1.0),  # (x, y, z) size, isotropic spacing mm
    "small": ((96, 96, 62), 2.5),
}

# mean intensity of each tissue relative to T1 white matter, per modality
#           WM     GM     CSF    NCR    ED     ET
CONTRAST: dict[str, tuple[float, ...]] = {
    "t1": (1.00, 0.72, 0.30, 0.36, 0.68, 0.62),
    "t1ce": (1.00, 0.74, 0.30, 0.38, 0.70, 1.50),
    "t2": (0.55, 0.78, 1.65, 1.40, 1.18, 0.95),
    "flair": (0.70, 0.92, 0.22, 0.60, 1.50, 1.05),
}
GAIN = {"t1": (350, 900), "t1ce": (400, 1100), "t2": (250, 800), "flair": (200, 600)}


@dataclass
class BratsCase:
    """Four co-registered modalities and the tumour label, numpy (z, y, x), canonical LPS."""

    images: dict[str, np.ndarray]  # modality (flair, t1, t1ce, t2) → int16, ≥ 0
    label: np.ndarray  # uint8, 2023 convention (0, 1, 2, 3)
    geometry: Geometry
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        sx, sy, sz = self.geometry.spacing
        return (sz, sy, sx)

    def label_in(self, convention: str) -> np.ndarray:
        """The label map in the 2023 (0,1,2,3) or legacy (0,1,2,4) convention."""
        if convention == "2023":
            return self.label
        if convention == "legacy":
            lut = np.zeros(256, dtype=np.uint8)
            for new, old in BRATS_2023_TO_LEGACY.items():
                lut[new] = old
            return lut[self.label]
        raise ValueError(f"unknown label convention {convention!r}; choose 2023 or legacy")


def brats_geometry(size: str) -> Geometry:
    """The BraTS grid: identity direction (LPS), origin (0, -(ny-1)·s, 0) as SimpleITK reads BraTS files."""
    (nx, ny, nz), s = SIZES[size]
    return Geometry((nx, ny, nz), (s, s, s), (0.0, -(ny - 1) * s, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))


def make_brats_case(seed: int, size: str = "small", atlas: str = "auto") -> BratsCase:
    """Deterministic synthetic BraTS case for `seed` (same seed and atlas → byte-identical arrays)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    source = load_atlas(atlas)
    geometry = brats_geometry(size)
    rng_warp, rng_tumour = rng_for(seed, 11), rng_for(seed, 12)
    out_centre = np.asarray(geometry.origin) + (np.asarray(geometry.size) - 1) * np.asarray(geometry.spacing) / 2
    out_centre = out_centre + np.array([0.0, 8.0, 5.0])  # brains in BraTS sit slightly posterior and high
    affine = _random_affine(rng_warp)
    shift = rng_warp.normal(0, 2.0, size=3)
    tumour_atlas = _tumour_site(source, rng_tumour)
    tumour_centre = out_centre + np.linalg.solve(affine, tumour_atlas - source.centre() - shift)
    radii = _tumour_radii(rng_tumour, size)
    full = Grid((geometry.size[2], geometry.size[1], geometry.size[0]), geometry.spacing, geometry.origin)  # type: ignore[arg-type]
    box = _brain_box(full, source, affine, out_centre, shift)
    sub = Grid(tuple(s.stop - s.start for s in box), geometry.spacing,  # type: ignore[arg-type]
               tuple(float(geometry.origin[i] + box[2 - i].start * geometry.spacing[i]) for i in range(3)))  # type: ignore[arg-type]
    maps = _warp(source, sub, affine, out_centre, shift, tumour_centre, radii["enhancing"], rng_warp, size)
    label_box = _grow_tumour(sub, maps, tumour_centre, radii, rng_tumour)
    label = np.zeros(full.shape, dtype=np.uint8)
    label[box] = label_box
    images = {}
    for i, modality in enumerate(BRATS_MODALITIES):
        image = np.zeros(full.shape, dtype=np.int16)
        image[box] = _render(modality, maps, label_box, sub, rng_for(seed, 20 + i))
        images[modality] = image
    voxel = float(np.prod(geometry.spacing))
    counts = np.bincount(label_box.ravel(), minlength=4)
    info = {
        "seed": int(seed), "size": size, "atlas": source.source,
        "tumour_centre_mm": [round(float(v), 2) for v in tumour_centre],
        "tumour_volumes_mm3": {BRATS_LABELS[k]: float(counts[k]) * voxel for k in (1, 2, 3)},
    }
    return BratsCase(images, label, geometry, info)


def _random_affine(rng: np.random.Generator) -> np.ndarray:
    """Output→atlas linear part: head size and pose differ between patients."""
    scale = rng.uniform(0.88, 1.12) * rng.uniform(0.95, 1.05, size=3)
    return random_rotation(rng, 7.0) @ np.diag(1.0 / scale)


def _brain_box(grid: Grid, atlas: Atlas, affine: np.ndarray, out_centre: np.ndarray, shift: np.ndarray) -> tuple[slice, slice, slice]:
    """Output voxels that can receive brain: the atlas mask's box mapped back, plus the deformation reach."""
    lo, hi = atlas.bounds_xyz
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])], dtype=float)
    phys = np.asarray(atlas.geometry.origin) + corners * np.asarray(atlas.geometry.spacing)
    back = out_centre + np.linalg.solve(affine, (phys - atlas.centre() - shift).T).T
    box = grid.box(back.min(axis=0) - 15.0, back.max(axis=0) + 15.0)
    assert box is not None
    return box


def _tumour_site(atlas: Atlas, rng: np.random.Generator) -> np.ndarray:
    """A white-matter point of a cerebral hemisphere, well inside the brain (atlas mm)."""
    wm = atlas.wm
    idx = np.argwhere(wm[::3, ::3, ::3] > 0.85) * 3
    centre_zyx = (np.asarray(atlas.centre()) - np.asarray(atlas.geometry.origin))[::-1] / np.asarray(atlas.geometry.spacing)[::-1]
    rel = idx - centre_zyx
    keep = (np.abs(rel[:, 2]) > 12) & (np.abs(rel[:, 2]) < 48) & (rel[:, 0] > -10) & (np.abs(rel[:, 1]) < 60)
    idx = idx[keep]
    pick = idx[int(rng.integers(len(idx)))]
    return np.asarray(atlas.geometry.origin) + pick[::-1] * np.asarray(atlas.geometry.spacing)


def _tumour_radii(rng: np.random.Generator, size: str) -> dict[str, float]:
    necrosis = rng.uniform(4.0, 13.0) if size == "full" else rng.uniform(6.0, 13.0)
    enhancing = necrosis + rng.uniform(3.5, 7.0) * (1.0 if size == "full" else 1.4)
    edema = enhancing + rng.uniform(8.0, 28.0)
    return {"necrosis": necrosis, "enhancing": enhancing, "edema": edema}


@functools.lru_cache(maxsize=4)
def _atlas_images(atlas: Atlas, sigma: float) -> dict[str, sitk.Image]:
    """The atlas maps as SimpleITK images, pre-smoothed by `sigma` mm against aliasing on coarse grids."""
    out = {}
    for key in ("t1", "gm", "wm"):
        image = atlas.geometry.apply_to(sitk.GetImageFromArray(getattr(atlas, key)))
        out[key] = sitk.SmoothingRecursiveGaussian(image, sigma) if sigma else image
    return out


def _warp(atlas: Atlas, grid: Grid, affine: np.ndarray, out_centre: np.ndarray, shift: np.ndarray, tumour: np.ndarray,
          tumour_radius: float, rng: np.random.Generator, size: str) -> dict[str, np.ndarray]:
    """Resample the atlas maps onto `grid` through affine ∘ (smooth + mass-effect) displacement.

    The map is built as one dense displacement field (separable smooth terms, so cheap) and
    applied with SimpleITK's Warp, which is several times faster than resampling through a
    composite transform with a displacement-field component.
    """
    x, y, z = (a.astype(np.float64) for a in grid.coords(tuple(slice(0, n) for n in grid.shape)))  # type: ignore[arg-type]
    amp = rng.uniform(1.5, 3.5)
    smooth = [amp * cosine_field(rng, x, y, z, wavelength=(60.0, 140.0), terms=2) for _ in range(3)]
    dx, dy, dz = x - tumour[0], y - tumour[1], z - tumour[2]
    push = rng.uniform(0.25, 0.45) * np.exp(-(dx * dx + dy * dy + dz * dz) / (2.2 * tumour_radius) ** 2)
    moved = [x + smooth[0] - push * dx - out_centre[0], y + smooth[1] - push * dy - out_centre[1], z + smooth[2] - push * dz - out_centre[2]]
    target = atlas.centre() + shift
    field = np.empty((*grid.shape, 3), dtype=np.float64)
    for i, p in enumerate((x, y, z)):
        field[..., i] = target[i] + affine[i, 0] * moved[0] + affine[i, 1] * moved[1] + affine[i, 2] * moved[2] - p
    displacement = sitk.GetImageFromArray(field, isVector=True)
    displacement.SetOrigin(grid.origin)
    displacement.SetSpacing(grid.spacing)
    del field
    size_xyz = [grid.shape[2], grid.shape[1], grid.shape[0]]
    sigma = 0.0 if size == "full" else 0.45 * SIZES[size][1]
    out = {}
    for key, image in _atlas_images(atlas, sigma).items():
        warped = sitk.Warp(image, displacement, sitk.sitkLinear, size_xyz, grid.origin, grid.spacing, (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), 0.0)
        out[key] = sitk.GetArrayFromImage(warped).astype(np.float32)
    out["mask"] = (out["t1"] > 0.1).astype(np.float32)  # the T1 template is 0 outside the brain, ≥ 0.15 inside
    for key in ("t1", "gm", "wm"):
        out[key] *= out["mask"]
    out["csf"] = np.clip(out["mask"] - out["gm"] - out["wm"], 0, 1)
    return out


def _grow_tumour(grid: Grid, maps: dict[str, np.ndarray], centre: np.ndarray, radii: dict[str, float],
                 rng: np.random.Generator) -> np.ndarray:
    label = np.zeros(grid.shape, dtype=np.uint8)
    tissue = maps["gm"] + maps["wm"]
    rot = random_rotation(rng, 90.0)
    stretch = rng.uniform(0.8, 1.2, size=3)
    edema = ellipsoid(grid, centre + rng.normal(0, 3, 3), radii["edema"] * stretch * rng.uniform(0.85, 1.15, 3), rot, wobble(rng, 0.18, 4, (1.5, 4.0)))
    if edema is not None:
        wm = maps["wm"][edema.box]
        grows = (edema.value - 0.35 * (wm - 0.5)) < 1.0  # edema follows white matter tracts
        sub = label[edema.box]
        sub[grows & (tissue[edema.box] > 0.35)] = 2
    for name, value, amp in (("enhancing", 3, 0.14), ("necrosis", 1, 0.12)):
        f = ellipsoid(grid, centre, radii[name] * stretch, rot, wobble(rng, amp, 4, (2.0, 4.5)))
        if f is not None:
            sub = label[f.box]
            sub[(f.value < 1.0) & (maps["mask"][f.box] > 0.5)] = value
    return label


def _render(modality: str, maps: dict[str, np.ndarray], label: np.ndarray, grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """One MR contrast: tissue mixture, tumour compartments, bias field, Rician noise, scanner gain."""
    w, g, c, ncr, ed, et = (v * rng.uniform(0.95, 1.05) for v in CONTRAST[modality])
    if modality in ("t1", "t1ce"):  # real T1 texture from the template
        image = maps["t1"] * np.float32(w) + maps["csf"] * np.float32(c - 0.3 * w)
    else:
        image = maps["wm"] * np.float32(w) + maps["gm"] * np.float32(g) + maps["csf"] * np.float32(c)
    present = np.nonzero(label.any(axis=(1, 2)))[0], np.nonzero(label.any(axis=(0, 2)))[0], np.nonzero(label.any(axis=(0, 1)))[0]
    if all(p.size for p in present):
        box = tuple(slice(max(int(p[0]) - 3, 0), int(p[-1]) + 4) for p in present)
        lab = label[box]
        mm = float(grid.spacing[0])
        texture = ndimage.gaussian_filter(rng.standard_normal(lab.shape).astype(np.float32), 2.0 / mm)
        texture /= np.float32(max(float(texture.std()), 1e-6))
        weights = [ndimage.gaussian_filter((lab == k).astype(np.float32), 0.6) for k in (1, 2, 3)]
        means = ((ncr, 0.2), (ed, 0.06), (et, 0.15))
        mixed = sum(wk * np.float32(m) * (1 + np.float32(a) * texture) for wk, (m, a) in zip(weights, means, strict=True))
        sub = image[box]
        sub *= 1 - np.clip(weights[0] + weights[1] + weights[2], 0, 1)
        sub += mixed * maps["mask"][box]
    x, y, z = grid.coords(tuple(slice(0, n) for n in grid.shape))  # type: ignore[arg-type]
    image *= np.exp(np.float32(rng.uniform(0.08, 0.2)) * cosine_field(rng, x, y, z, wavelength=(90.0, 220.0), terms=2))
    sd = np.float32(rng.uniform(0.015, 0.04))
    n1 = rng.standard_normal(image.shape, dtype=np.float32) * sd
    n2 = rng.standard_normal(image.shape, dtype=np.float32) * sd
    image += n1
    image *= image
    image += n2 * n2
    np.sqrt(image, out=image)
    image *= maps["mask"]
    image *= np.float32(rng.uniform(*GAIN[modality]))
    return np.clip(np.rint(image), 0, 32767).astype(np.int16)
