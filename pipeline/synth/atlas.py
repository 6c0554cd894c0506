"""Brain anatomy for synthetic MRI: the MNI152 2009a template shipped in nilearn's wheel, or a
procedural head when nilearn is not installed.

nilearn is never imported (it is the optional `anatomy` extra and pulls in pandas/sklearn);
its data folder is located with importlib.util.find_spec and the NIfTI files are read with
SimpleITK. Both sources give the same thing: 1 mm canonical-LPS probability maps of grey
matter, white matter and CSF, a brain mask and a T1 texture (white matter ≈ 1).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from pipeline.image_io import Geometry, to_canonical
from pipeline.synth.grid import Grid
from pipeline.synth.noise import rng_for, wobble
from pipeline.synth.shapes import ellipsoid, tube

MNI_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
ATLAS_CHOICES = ("auto", "mni", "procedural")
ATLAS_ENV = "SEGPIPE_SYNTH_ATLAS"  # overrides "auto" (e.g. to force the fallback in tests)


@dataclass(frozen=True, eq=False)  # hashed by identity: cached per loaded atlas
class Atlas:
    source: str  # "mni152-2009a-sym (nilearn)" or "procedural"
    geometry: Geometry  # canonical LPS grid of the maps
    t1: np.ndarray  # float32 (z, y, x), white matter ≈ 1, 0 outside the brain
    gm: np.ndarray  # float32 probabilities
    wm: np.ndarray
    csf: np.ndarray
    mask: np.ndarray  # float32 0/1

    @functools.cached_property
    def bounds_xyz(self) -> tuple[np.ndarray, np.ndarray]:
        """First and last voxel index (x, y, z) of the brain mask."""
        zs, ys, xs = (np.nonzero(self.mask.any(axis=axes))[0] for axes in ((1, 2), (0, 2), (0, 1)))
        return np.array([xs[0], ys[0], zs[0]]), np.array([xs[-1], ys[-1], zs[-1]])

    def centre(self) -> np.ndarray:
        """Physical centre (x, y, z mm) of the brain mask's bounding box."""
        lo, hi = self.bounds_xyz
        return np.asarray(self.geometry.origin) + (lo + hi) / 2.0 * np.asarray(self.geometry.spacing)


def nilearn_data_dir() -> Path | None:
    """nilearn's bundled data folder if the MNI files are there; nilearn is not imported."""
    try:
        spec = importlib.util.find_spec("nilearn")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "datasets" / "data"
        if all((folder / name).is_file() for name in MNI_FILES.values()):
            return folder
    return None


def resolve_atlas(kind: str = "auto") -> str:
    """'mni' or 'procedural' for a requested kind (auto: MNI when nilearn's files are present)."""
    if kind not in ATLAS_CHOICES:
        raise ValueError(f"unknown atlas {kind!r}; choose one of {', '.join(ATLAS_CHOICES)}")
    if kind == "auto":
        kind = os.environ.get(ATLAS_ENV, "auto") or "auto"
        if kind not in ATLAS_CHOICES:
            raise ValueError(f"{ATLAS_ENV}={kind!r}: choose one of {', '.join(ATLAS_CHOICES)}")
    if kind == "auto":
        return "mni" if nilearn_data_dir() is not None else "procedural"
    if kind == "mni" and nilearn_data_dir() is None:
        raise ValueError("atlas 'mni' needs the nilearn wheel's MNI152 files (pip install 'segpipe[anatomy]')")
    return kind


def load_atlas(kind: str = "auto") -> Atlas:
    """The atlas for `kind` (resolved on every call, loaded once per process)."""
    return _cached_atlas(resolve_atlas(kind))


@functools.lru_cache(maxsize=2)
def _cached_atlas(kind: str) -> Atlas:
    return _load_mni(nilearn_data_dir()) if kind == "mni" else _procedural_head()  # type: ignore[arg-type]


def _load_mni(folder: Path) -> Atlas:
    arrays = {}
    geometry = None
    for key, name in MNI_FILES.items():
        array, reo = to_canonical(sitk.ReadImage(str(folder / name)))
        arrays[key] = array.astype(np.float32)
        geometry = reo.canonical
    assert geometry is not None
    mask = (arrays["t1"] > 0).astype(np.float32)
    gm = arrays["gm"] / 255.0 * mask
    wm = arrays["wm"] / 255.0 * mask
    total = gm + wm
    over = total > 1
    gm[over] /= total[over]
    wm[over] /= total[over]
    csf = np.clip(mask - gm - wm, 0, 1)
    t1 = arrays["t1"]
    t1 /= np.float32(np.median(t1[wm > 0.9]))
    return Atlas("mni152-2009a-sym (nilearn)", geometry, t1, gm.astype(np.float32), wm.astype(np.float32), csf.astype(np.float32), mask)


def _procedural_head() -> Atlas:
    """A deterministic brain: folded cortex, white matter, ventricles, deep nuclei, cerebellum, stem."""
    rng = rng_for(20240601, 0)
    grid = Grid((150, 190, 160), (1.0, 1.0, 1.0), (-79.5, -104.5, -64.5))  # (nz, ny, nx), centred brain
    shape = grid.shape
    gm_, wm_, csf_ = 1, 2, 3
    tissue = np.zeros(shape, dtype=np.uint8)
    brain = ellipsoid(grid, np.array([0.0, -5.0, 8.0]), np.array([68.0, 86.0, 58.0]), None, wobble(rng, 0.04))
    assert brain is not None
    x, _, z = grid.coords(brain.box)
    depth = (1.0 - brain.value) * 65.0  # ≈ mm below the surface
    # gyri: the zero set of smoothed noise is a labyrinth of sulcal walls lined by cortex
    folds = ndimage.gaussian_filter(rng.standard_normal(depth.shape).astype(np.float32), 3.5)
    folds /= folds.std()
    region = tissue[brain.box]
    inside = depth > 0
    region[inside] = wm_
    region[inside & ((depth < 3.5) | ((np.abs(folds) < 0.55) & (depth < 20)))] = gm_
    region[inside & (np.abs(folds) < 0.12) & (depth < 17)] = csf_
    region[inside & (depth < 1.2)] = csf_  # subarachnoid space
    region[inside & (np.abs(x) < 1.6) & (z > -5) & (depth < 30)] = csf_  # interhemispheric fissure
    for side in (-1, 1):
        pts = np.array([[side * 9, -28, 14], [side * 11, -5, 20], [side * 14, 22, 16], [side * 20, 35, 0], [side * 26, 10, -18]])
        _paint(tissue, tube(grid, pts, np.array([5.0, 4.0, 4.5, 3.5, 3.0])), csf_)
        _paint(tissue, ellipsoid(grid, np.array([side * 11, 2.0, 4.0]), np.array([9.0, 15.0, 9.0]), None, None), gm_)  # thalamus
        _paint(tissue, ellipsoid(grid, np.array([side * 24, -10.0, 3.0]), np.array([6.0, 16.0, 10.0]), None, None), gm_)  # putamen
    _paint(tissue, tube(grid, np.array([[0, -5, 2], [0, 8, -2]]), np.array([1.5, 1.5])), csf_)  # third ventricle
    cerebellum = ellipsoid(grid, np.array([0.0, 48.0, -32.0]), np.array([50.0, 28.0, 22.0]), None, wobble(rng, 0.04))
    if cerebellum is not None:
        folia = ndimage.gaussian_filter(rng.standard_normal(cerebellum.value.shape).astype(np.float32), 1.5)
        folia /= folia.std()
        sub = tissue[cerebellum.box]
        inner = cerebellum.value < 0.55
        sub[(cerebellum.value < 1) & ~inner] = np.where(folia[(cerebellum.value < 1) & ~inner] > -0.2, gm_, csf_)
        sub[inner] = wm_
    _paint(tissue, tube(grid, np.array([[0, 8, -10], [0, 18, -40], [0, 24, -64]]), np.array([11.0, 10.0, 9.0])), wm_)
    mask = (tissue > 0).astype(np.float32)
    probs = [ndimage.gaussian_filter((tissue == t).astype(np.float32), 0.7) * mask for t in (gm_, wm_, csf_)]
    total = np.maximum(sum(probs), 1e-6)
    gm, wm, csf = (p / total * mask for p in probs)
    t1 = (1.0 * wm + 0.7 * gm + 0.28 * csf).astype(np.float32)
    geometry = Geometry((shape[2], shape[1], shape[0]), grid.spacing, grid.origin, (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    return Atlas("procedural", geometry, t1, gm.astype(np.float32), wm.astype(np.float32), csf.astype(np.float32), mask)


def _paint(tissue: np.ndarray, field, value: int) -> None:
    if field is not None:
        sub = tissue[field.box]
        sub[(field.value < 1) & (sub > 0)] = value
