"""The unlabelled body around the FLARE organs: outline, fat, muscle, skeleton, lungs, heart, bowel.

Anatomical frame (mm): x = patient left, y = posterior, z = superior (LPS); x = 0 on the
midline, y = 0 at the centre of the abdominal cavity, z = 0 at the renal hilum (L1/L2).
Cross-sections are 2D polar maps scaled per slice, so the whole-volume work is a handful of
broadcast comparisons; the skeleton and bowel are drawn inside their own bounding boxes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.synth.ct_tissues import ORGAN_ALLOW, T, lut
from pipeline.synth.grid import Grid
from pipeline.synth.noise import wobble
from pipeline.synth.shapes import ellipsoid, paint, tube


@dataclass(frozen=True)
class BodyPlan:
    """Per-case body dimensions that the organs are placed against."""

    ac: float  # abdominal cavity half-width (x) at z = 0
    bc: float  # cavity half-depth anterior of y = 0
    spine_y: float  # vertebral body centre
    dome: float  # top of the right diaphragm dome / liver (z)
    left_dome: float
    fat: tuple[float, float, float]  # subcutaneous fat: lateral, anterior, posterior (mm)
    muscle: float  # anterolateral wall thickness
    girth: tuple[float, float, float, float]  # slice scale polynomial coefficients in z/100
    vertebra: tuple[float, float, float]  # period, disc thickness, phase (mm)
    iliac_crest: float  # z where the iliac wings begin

    @property
    def cavity_back(self) -> float:
        return self.spine_y + 28.0

    def scale(self, z: np.ndarray) -> np.ndarray:
        """Cross-section scale per slice: chest a little wider, waist narrower, pelvis wider."""
        t = np.asarray(z, dtype=np.float64) / 100.0
        c0, c1, c2, c3 = self.girth
        return np.clip(c0 + c1 * t + c2 * t * t + c3 * t * t * t, 0.85, 1.15)


def plan_body(rng: np.random.Generator) -> BodyPlan:
    ac = rng.uniform(118, 148)
    bc = rng.uniform(82, 104)
    fat_lat = rng.uniform(8, 45)
    return BodyPlan(
        ac=ac,
        bc=bc,
        spine_y=bc * rng.uniform(0.48, 0.6),
        dome=rng.uniform(125, 160),
        left_dome=0.0 + rng.uniform(8, 25),  # below the right dome (relative)
        fat=(fat_lat, fat_lat * rng.uniform(0.7, 1.6), rng.uniform(8, 30)),
        muscle=rng.uniform(9, 15),
        girth=(1.0, rng.uniform(-0.02, 0.02), rng.uniform(0.01, 0.04), rng.uniform(-0.005, 0.005)),
        vertebra=(rng.uniform(30, 36), rng.uniform(6, 10), rng.uniform(0, 40)),
        iliac_crest=rng.uniform(-135, -100),
    )


def _polar_layers(plan: BodyPlan, grid: Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2D maps (y, x) of ρ / boundary radius for cavity, muscle wall and skin."""
    x = grid.axis(0).astype(np.float64)[None, :]
    y = grid.axis(1).astype(np.float64)[:, None]
    theta = np.arctan2(y, x)
    c, s = np.cos(theta), np.sin(theta)
    back = s > 0
    p = np.where(back, 3.0, 2.2)
    b = np.where(back, plan.cavity_back, plan.bc)
    rho_c = 1.0 / ((np.abs(c) / plan.ac) ** p + (np.abs(s) / b) ** p) ** (1.0 / p)
    rho_c *= 1.0 + 0.025 * np.sin(3 * theta + rng.uniform(0, 6.3))
    posterior = np.clip(s, 0, None) ** 4  # thick back muscles near the midline
    rho_m = rho_c + plan.muscle + 42.0 * posterior
    lat, ant, post = plan.fat
    fat = lat * c * c + np.where(back, post, ant) * s * s
    fat = fat * (1.0 + 0.12 * np.sin(2 * theta + rng.uniform(0, 6.3)))
    rho_b = rho_m + fat
    rho = np.sqrt(x * x + y * y)
    return (rho / rho_c).astype(np.float32), (rho / rho_m).astype(np.float32), (rho / rho_b).astype(np.float32)


def draw_body(tissue: np.ndarray, grid: Grid, plan: BodyPlan, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Paint outline, fat, wall muscle, cavity fat, lungs, heart, skeleton, psoas and bowel."""
    u_c, u_m, u_b = _polar_layers(plan, grid, rng)
    z = grid.axis(2)
    k = plan.scale(z).astype(np.float32)[:, None, None]
    layers = np.array([T.AIR, T.SUBCUT_FAT, T.MUSCLE, T.VISCERAL_FAT], dtype=np.uint8)
    for i, ki in enumerate(k[:, 0, 0]):
        tissue[i] = layers[(u_b < ki).view(np.uint8) + (u_m < ki).view(np.uint8) + (u_c < ki).view(np.uint8)]
    _draw_table(tissue, grid, plan, u_b, k)
    _draw_lungs_heart(tissue, grid, plan, u_c, k, rng)
    _draw_ribs(tissue, grid, plan, u_c, k, rng)
    _draw_spine(tissue, grid, plan)
    _draw_psoas(tissue, grid, plan, rng)
    _draw_pelvis(tissue, grid, plan, rng)
    _draw_bowel(tissue, grid, plan, rng)
    return {"cavity": u_c, "body": u_b}


def _draw_table(tissue: np.ndarray, grid: Grid, plan: BodyPlan, u_b: np.ndarray, k: np.ndarray) -> None:
    """The scanner couch: a curved slab just behind the patient's back, outside the body."""
    back = plan.cavity_back + plan.muscle + 42.0 + plan.fat[2]
    x = grid.axis(0)
    y0 = back * float(k.max()) + 6.0 + 0.0004 * x * x
    y = grid.axis(1)[:, None]
    slab = (y > y0[None, :]) & (y < y0[None, :] + 10.0) & (np.abs(x)[None, :] < 230)
    if slab.any():
        rows = np.broadcast_to(slab[None], tissue.shape)
        tissue[rows & (tissue == T.AIR)] = T.TABLE


def _draw_lungs_heart(tissue: np.ndarray, grid: Grid, plan: BodyPlan, u_c: np.ndarray, k: np.ndarray, rng: np.random.Generator) -> None:
    x = grid.axis(0)[None, :].astype(np.float64)
    y = grid.axis(1)[:, None].astype(np.float64)
    dome = np.where(x < 0, plan.dome, plan.dome - plan.left_dome)
    side_x = np.where(x < 0, -0.5, 0.5) * plan.ac
    # floor of the lungs: highest over each dome, lower laterally and in the posterior recesses
    floor = dome - 8 - 45 * ((x - side_x) / plan.ac) ** 2 - 70 * np.clip(y / plan.bc, 0, None) ** 2
    floor = np.where(np.abs(x) < 22 + 0.25 * np.clip(y, 0, None), np.inf, floor)  # mediastinum
    zs = grid.axis(2)
    top = zs > floor.min()
    if top.any():
        sl = slice(int(np.argmax(top)), len(zs))
        lungs = (zs[sl, None, None] > floor[None]) & (u_c[None] < k[sl] * 1.02)
        sub = tissue[sl]
        sub[lungs & ORGAN_ALLOW[sub]] = T.LUNG
    heart = ellipsoid(
        grid,
        np.array([rng.uniform(5, 25), -0.45 * plan.bc, plan.dome + rng.uniform(55, 70)]),
        np.array([rng.uniform(55, 70), rng.uniform(40, 48), 60.0]),
        rotation=None,
        wobble=wobble(rng, 0.05),
    )
    paint(tissue, heart, T.MYOCARDIUM, allow=lut(T.LUNG, T.VISCERAL_FAT))
    if heart is not None:
        paint(tissue, heart, T.HEART, level=0.8, allow=lut(T.MYOCARDIUM))


def _draw_ribs(tissue: np.ndarray, grid: Grid, plan: BodyPlan, u_c: np.ndarray, k: np.ndarray, rng: np.random.Generator) -> None:
    """Ribs: bands in the inner chest wall that run downward from back to front, absent below the costal margin."""
    x = grid.axis(0)[None, :]
    y = grid.axis(1)[:, None]
    rho = np.sqrt(x * x + y * y)
    from_back = np.arccos(np.clip(y / np.maximum(rho, 1e-3), -1, 1))  # 0 posterior midline … π anterior
    kk = k[:, 0, 0]
    lo, hi = 1.5, 11.0  # mm into the wall, measured from the cavity boundary
    reach = rho * (1 - 1 / np.maximum(u_c, 1e-3))
    band = (rho * (1 - float(kk.max()) / np.maximum(u_c, 1e-3)) < hi) & (reach > lo)
    band &= (from_back > 0.45) & ~((y < 0) & (np.abs(x) < 45))
    idx = np.flatnonzero(band)
    if idx.size == 0:
        return
    phi = from_back.ravel()[idx]
    depth = rho.ravel()[idx][None, :] * (1 - kk[:, None] / u_c.ravel()[idx][None, :])
    drop = 35.0 * phi  # ribs run downward towards the front
    margin = plan.dome - 150 + 90 * (phi / np.pi) ** 1.5  # costal margin
    period, thick = rng.uniform(26, 32), rng.uniform(9, 12)
    z = grid.axis(2)[:, None]
    pos = (z + drop[None, :] - rng.uniform(0, period)) % period
    rib = (pos < thick) & (z > margin[None, :]) & (z < plan.dome + 120) & (depth > lo) & (depth < hi)
    core = rib & (np.abs(pos - thick / 2) < thick / 2 - 2.5) & (np.abs(depth - (lo + hi) / 2) < 2.5)
    flat = tissue.reshape(tissue.shape[0], -1)
    sub = flat[:, idx]
    sub[rib] = T.CORTICAL_BONE
    sub[core] = T.MARROW
    flat[:, idx] = sub


def _draw_spine(tissue: np.ndarray, grid: Grid, plan: BodyPlan) -> None:
    ys = plan.spine_y
    box = grid.box(np.array([-60.0, ys - 30, -1e4]), np.array([60.0, ys + 95, 1e4]))
    if box is None:
        return
    x, y, z = grid.coords(box)
    x2, y2 = x[0], y[0]  # (1, nx), (ny, 1)
    body = ((x2 / 21.0) ** 2 + ((y2 - ys) / 16.0) ** 2) < 1
    body_core = ((x2 / 18.0) ** 2 + ((y2 - ys) / 13.0) ** 2) < 1
    canal_y = ys + 28
    canal = ((x2 / 9.0) ** 2 + ((y2 - canal_y) / 8.0) ** 2) < 1
    arch = (((x2 / 16.0) ** 2 + ((y2 - canal_y) / 14.0) ** 2) < 1) & ~canal & (y2 > ys + 12)
    spinous = (np.abs(x2) < 4.5) & (y2 > canal_y + 10) & (y2 < canal_y + 52)
    transverse = (np.abs(x2) < 38) & (np.abs(y2 - (ys + 22) - 0.25 * np.abs(x2)) < 3.0) & (np.abs(x2) > 12)
    period, disc, phase = plan.vertebra
    pos = (z[:, 0, 0] + phase) % period
    is_disc = pos < disc
    is_mid = np.abs(pos - (disc + period) / 2) < (period - disc) * 0.22
    lumbar = z[:, 0, 0] > plan.iliac_crest - 40
    sub = tissue[box]
    vert = ~is_disc[:, None, None]
    sub[np.broadcast_to(body, sub.shape) & ~vert] = T.DISC
    sub[np.broadcast_to(body, sub.shape) & vert] = T.CORTICAL_BONE
    sub[np.broadcast_to(body_core, sub.shape) & vert] = T.MARROW
    sub[np.broadcast_to(arch | spinous, sub.shape) & vert & lumbar[:, None, None]] = T.CORTICAL_BONE
    sub[np.broadcast_to(transverse, sub.shape) & (is_mid & lumbar)[:, None, None]] = T.CORTICAL_BONE
    sub[np.broadcast_to(canal, sub.shape)] = T.CANAL


def _draw_psoas(tissue: np.ndarray, grid: Grid, plan: BodyPlan, rng: np.random.Generator) -> None:
    ys = plan.spine_y
    for side in (-1, 1):
        pts = np.array([[side * 24.0, ys + 2, 25], [side * 34.0, ys + 4, -40], [side * 46.0, ys - 2, -120], [side * 52.0, ys - 12, -190]])
        radii = np.array([6.0, 14.0, 20.0, 22.0]) * rng.uniform(0.85, 1.15)
        paint(tissue, tube(grid, pts, radii, flatten=(1.0, 0.8)), T.MUSCLE, allow=lut(T.VISCERAL_FAT))


def _draw_pelvis(tissue: np.ndarray, grid: Grid, plan: BodyPlan, rng: np.random.Generator) -> None:
    """Iliac wings flaring from the crest down, a sacrum, the bladder low in front."""
    crest = plan.iliac_crest
    if grid.extent[2][0] > crest:
        return
    allow = lut(T.VISCERAL_FAT, T.MUSCLE, T.BOWEL_WALL, T.BOWEL_FLUID, T.BOWEL_GAS, T.STOOL)
    for side in (-1, 1):
        pts = np.array([[side * 0.72 * plan.ac, plan.spine_y - 5, crest - 5],
                        [side * 0.62 * plan.ac, plan.spine_y + 5, crest - 60],
                        [side * 0.45 * plan.ac, plan.spine_y + 10, crest - 120]])
        wing = tube(grid, pts, np.array([14.0, 22.0, 18.0]), flatten=(0.45, 1.6))
        paint(tissue, wing, T.CORTICAL_BONE, allow=allow)
        paint(tissue, wing, T.MARROW, level=0.6, allow=lut(T.CORTICAL_BONE))
    sacrum = tube(grid, np.array([[0, plan.spine_y + 5, crest - 30], [0, plan.spine_y + 20, crest - 110]]),
                  np.array([26.0, 20.0]), flatten=(1.6, 0.6))
    paint(tissue, sacrum, T.CORTICAL_BONE, allow=allow | lut(T.DISC, T.MARROW))
    paint(tissue, sacrum, T.MARROW, level=0.7, allow=lut(T.CORTICAL_BONE))
    bladder = ellipsoid(grid, np.array([0.0, -0.45 * plan.bc, crest - rng.uniform(120, 150)]),
                        np.array([45.0, 35.0, 40.0]) * rng.uniform(0.7, 1.2), wobble=wobble(rng, 0.05))
    paint(tissue, bladder, T.BLADDER, allow=allow)


def _draw_bowel(tissue: np.ndarray, grid: Grid, plan: BodyPlan, rng: np.random.Generator) -> None:
    """Colon frame and small-bowel loops: gas, fluid and stool that organs must be told apart from."""
    ac, bc = plan.ac, plan.bc
    allow = lut(T.VISCERAL_FAT, T.BOWEL_WALL, T.BOWEL_FLUID)
    j = lambda s: rng.normal(0, s, size=3)  # noqa: E731
    colon = np.array([
        [-0.72 * ac, 0.05 * bc, -160], [-0.75 * ac, 0.0, -60], [-0.7 * ac, -0.1 * bc, -5],
        [-0.45 * ac, -0.6 * bc, 5], [0.0, -0.78 * bc, -15], [0.45 * ac, -0.6 * bc, 35],
        [0.72 * ac, -0.05 * bc, 55], [0.76 * ac, 0.1 * bc, -20], [0.7 * ac, 0.05 * bc, -120],
        [0.3 * ac, -0.3 * bc, -175],
    ]) + np.array([j(6) for _ in range(10)])
    radius = rng.uniform(17, 24) * rng.uniform(0.85, 1.15, size=len(colon))
    field = tube(grid, colon, radius)
    _paint_bowel(tissue, field, float(radius.mean()), rng, allow, content=T.STOOL)
    for _ in range(int(rng.integers(6, 10))):
        start = np.array([rng.uniform(-0.5, 0.5) * ac, rng.uniform(-0.7, 0.1) * bc, rng.uniform(-170, -10)])
        steps = rng.normal(0, 22, size=(5, 3))
        pts = start + np.cumsum(np.vstack([np.zeros(3), steps]), axis=0)
        r = rng.uniform(9, 14)
        _paint_bowel(tissue, tube(grid, pts, np.full(len(pts), r)), r, rng, allow, content=T.BOWEL_FLUID)


def _paint_bowel(tissue: np.ndarray, field, radius: float, rng: np.random.Generator, allow: np.ndarray, *, content: int) -> None:
    if field is None:
        return
    paint(tissue, field, T.BOWEL_WALL, allow=allow)
    lumen = 1.0 - 2.5 / radius
    paint(tissue, field, content, level=lumen, allow=lut(T.BOWEL_WALL))
    if rng.random() < 0.7:  # gas rises to the anterior side of the lumen (patient supine)
        sub = tissue[field.box]
        y = np.arange(field.box[1].start, field.box[1].stop)
        inside = (field.value < lumen) & (sub == content)
        if inside.any():
            rows = np.nonzero(inside.any(axis=(0, 2)))[0]
            cut = y[rows[0]] + (y[rows[-1]] - y[rows[0]]) * rng.uniform(0.2, 0.6)
            sub[inside & (y[None, :, None] < cut)] = T.BOWEL_GAS
