"""The 13 FLARE22 organs and the unlabelled vessels around them, placed against a BodyPlan.

Positions follow adult anatomy in the frame of ct_body (mm, LPS, z = 0 at the renal hilum):
liver in the right upper quadrant under the right dome, spleen posterolateral left, kidneys
beside the spine with the right one lower, adrenals above and medial to them, aorta left
anterior of the spine, IVC to its right running up through the liver, esophagus in front of
the aorta down to the stomach, pancreas from the duodenal C across to the splenic hilum. Each
case scales, shifts, tilts and perturbs every organ. Painting order decides contacts: the
unlabelled look-alikes first, tubes last, so vessels keep their full calibre.
"""

from __future__ import annotations

import numpy as np

from pipeline.synth.ct_body import BodyPlan
from pipeline.synth.ct_tissues import ORGAN_ALLOW, SOFT_BACKGROUND, T, lut
from pipeline.synth.grid import Grid
from pipeline.synth.noise import axis_angle, random_rotation, wobble
from pipeline.synth.shapes import Field, ellipsoid, paint, subtract, tube, union

SOFT = lut(*SOFT_BACKGROUND)
TUBE_ALLOW = ORGAN_ALLOW | lut(T.HEART, T.MYOCARDIUM)


def _rot(axis: tuple[float, float, float], deg: float) -> np.ndarray:
    return axis_angle(np.asarray(axis, dtype=float), np.deg2rad(deg))


def draw_organs(tissue: np.ndarray, grid: Grid, plan: BodyPlan, rng: np.random.Generator) -> dict[str, float]:
    """Paint all organs into `tissue`; returns the landmark heights chosen for this case."""
    ac, bc, ys, d = plan.ac, plan.bc, plan.spine_y, plan.dome

    def jit(sd: float = 5.0) -> np.ndarray:
        return rng.normal(0, sd, size=3)

    def u(a: float, b: float) -> float:
        return float(rng.uniform(a, b))

    z_rk = d - 140 + u(-12, 8)
    z_lk = z_rk + u(8, 22)
    z_bif = d - 250 + u(-15, 15)
    aorta_x, aorta_y = 0.1 * ac, ys - 33

    # -- unlabelled vessels: portal/splenic/mesenteric veins, mesenteric/renal/iliac arteries
    confluence = np.array([-0.06 * ac, -0.15 * bc, d - 135]) + jit(3)
    hilum = np.array([-0.3 * ac, -0.08 * bc, d - 95]) + jit(4)
    spleen_c = np.array([0.72 * ac, ys - 8, d - 62 - u(0, 12)]) + jit(4)
    veins = [
        tube(grid, np.array([confluence, (confluence + hilum) / 2 + np.array([0, -5, 0]), hilum]), np.array([7.5, 7.0, 6.5]) * u(0.85, 1.15)),
        tube(grid, np.array([confluence, [0.2 * ac, -0.1 * bc, d - 126], [0.45 * ac, 0.02 * bc, d - 112], spleen_c + np.array([-25, 0, -5])]),
             np.full(4, 4.5 * u(0.8, 1.2))),
        tube(grid, np.array([confluence, confluence + np.array([-3, -15, -45]), confluence + np.array([-5, -25, -100])]), np.full(3, 5.5 * u(0.8, 1.2))),
        tube(grid, np.array([[0.4 * ac, ys - 8, z_lk], [aorta_x, aorta_y - 17, z_lk - 6], [-0.17 * ac, ys - 28, z_lk - 8]]),
             np.full(3, 4.5 * u(0.8, 1.2)), flatten=(1.0, 0.7)),
        tube(grid, np.array([[-0.38 * ac, ys - 6, z_rk], [-0.17 * ac, ys - 28, z_rk + 3]]), np.full(2, 5.0)),
        tube(grid, np.array([[-0.17 * ac, ys - 25, z_bif - 5], [-0.3 * ac, ys - 12, z_bif - 60], [-0.36 * ac, ys - 20, z_bif - 140]]), np.full(3, 8.0)),
        tube(grid, np.array([[-0.15 * ac, ys - 25, z_bif - 5], [0.28 * ac, ys - 12, z_bif - 60], [0.36 * ac, ys - 20, z_bif - 140]]), np.full(3, 8.0)),
    ]
    arteries = [
        tube(grid, np.array([[aorta_x, aorta_y - 8, d - 130], [aorta_x - 3, aorta_y - 22, d - 150], [aorta_x - 8, -0.35 * bc, d - 230]]), np.full(3, 4.0)),
        tube(grid, np.array([[aorta_x, aorta_y, z_bif], [-0.3 * ac, ys - 25, z_bif - 60], [-0.38 * ac, ys - 30, z_bif - 140]]), np.full(3, 6.0)),
        tube(grid, np.array([[aorta_x, aorta_y, z_bif], [0.32 * ac, ys - 25, z_bif - 60], [0.38 * ac, ys - 30, z_bif - 140]]), np.full(3, 6.0)),
        tube(grid, np.array([[aorta_x, aorta_y, z_rk + 8], [-0.38 * ac, ys - 4, z_rk + 4]]), np.full(2, 3.0)),
        tube(grid, np.array([[aorta_x, aorta_y, z_lk + 4], [0.4 * ac, ys - 4, z_lk]]), np.full(2, 3.0)),
    ]
    for f in veins:
        paint(tissue, f, T.VEIN, allow=SOFT)
    for f in arteries:
        paint(tissue, f, T.ARTERY, allow=SOFT)

    # -- liver: right lobe + left lobe, then portal/hepatic vessel branches inside it
    right = ellipsoid(
        grid,
        np.array([-0.42 * ac, (ys + 18 - bc) / 2, d - 74]) + jit(4),
        np.array([0.6 * ac * u(0.92, 1.08), (ys + 18 + bc) / 2 * u(1.0, 1.12), 74 * u(0.88, 1.06)]),
        random_rotation(rng, 8),
        wobble(rng, 0.08),
    )
    left = ellipsoid(
        grid,
        np.array([0.08 * ac, -0.55 * bc, d - 48]) + jit(5),
        np.array([0.38 * ac * u(0.8, 1.2), 0.3 * bc * u(0.85, 1.15), 38 * u(0.85, 1.15)]),
        _rot((0, 1, 0), u(-10, 20)),
        wobble(rng, 0.1),
    )
    liver = union(right, left)
    paint(tissue, liver, T.LIVER, allow=ORGAN_ALLOW)
    only_liver = lut(T.LIVER)
    for _ in range(3):
        end = hilum + np.array([-u(30, 70), u(-40, 40), u(-10, 45)])
        paint(tissue, tube(grid, np.array([hilum, (hilum + end) / 2 + jit(6), end]), np.array([6.0, 4.0, 2.2])), T.LIVER_VESSEL, allow=only_liver)
    hv_root = np.array([-0.12 * ac, ys - 40, d - 15])
    for _ in range(3):
        end = hv_root + np.array([-u(20, 80), -u(20, 70), -u(10, 40)])
        paint(tissue, tube(grid, np.array([hv_root, end]), np.array([5.0, 2.2])), T.LIVER_VESSEL, allow=only_liver)

    # -- spleen: posterolateral crescent
    spleen = ellipsoid(
        grid, spleen_c,
        np.array([22, 50, 46]) * rng.uniform(0.82, 1.15, size=3),
        _rot((0, 0, 1), u(-45, -20)) @ random_rotation(rng, 8),
        wobble(rng, 0.08),
    )
    hollow = ellipsoid(grid, spleen_c + np.array([-26, -6, 0]), np.array([18, 34, 36]), None, None)
    paint(tissue, subtract(spleen, hollow), T.SPLEEN, allow=ORGAN_ALLOW)

    # -- kidneys with medulla and a medial sinus
    for side, zc, label, medulla in ((-1, z_rk, T.RIGHT_KIDNEY, T.RIGHT_MEDULLA), (1, z_lk, T.LEFT_KIDNEY, T.LEFT_MEDULLA)):
        center = np.array([side * 0.48 * ac, ys - 2, zc]) + jit(4)
        radii = np.array([25, 21, 54]) * rng.uniform(0.85, 1.12, size=3)
        rot = _rot((0, 1, 0), side * -u(8, 18)) @ _rot((1, 0, 0), u(5, 18)) @ _rot((0, 0, 1), side * u(15, 35))
        kidney = ellipsoid(grid, center, radii, rot, wobble(rng, 0.05))
        paint(tissue, kidney, label, allow=ORGAN_ALLOW)
        own = lut(label)
        paint(tissue, ellipsoid(grid, center, radii * 0.72, rot, wobble(rng, 0.12, terms=4, freq=(4.0, 7.0))), medulla, allow=own)
        medial = rot @ np.array([-side * 1.0, 0, 0])
        sinus = ellipsoid(grid, center + medial * radii[0] * 0.75 + np.array([0, -4, 0]), radii * np.array([0.45, 0.4, 0.4]), rot, None)
        paint(tissue, sinus, T.RENAL_SINUS, allow=lut(label, medulla))

    # -- stomach: J-shaped tube, wall + fluid + gas cap
    ld = d - plan.left_dome
    stomach_pts = np.array([
        [0.48 * ac, ys - 38, ld - 38],
        [0.55 * ac, -0.32 * bc, ld - 78],
        [0.36 * ac, -0.62 * bc, d - 118],
        [0.02 * ac, -0.68 * bc, d - 124],
        [-0.17 * ac, -0.55 * bc, d - 116],
    ]) + np.array([jit(5) for _ in range(5)])
    stomach_r = np.array([30, 32, 27, 21, 12]) * u(0.75, 1.15)
    stomach = tube(grid, stomach_pts, stomach_r)
    _hollow_organ(tissue, stomach, T.STOMACH, T.STOMACH_FLUID, T.STOMACH_GAS, 4.0 / float(stomach_r.mean()), rng)

    # -- gallbladder under the liver
    gb_rot = _rot((1, 0, 0), u(-55, -25)) @ _rot((0, 1, 0), u(-25, 5))
    gb = ellipsoid(grid, np.array([-0.3 * ac, -0.55 * bc, d - 118]) + jit(5), np.array([15, 15, 34]) * rng.uniform(0.7, 1.15, size=3), gb_rot, wobble(rng, 0.06))
    paint(tissue, gb, T.GALLBLADDER, allow=ORGAN_ALLOW)

    # -- duodenum: C-loop from the pylorus around the pancreatic head
    duo_pts = np.array([
        stomach_pts[-1],
        [-0.3 * ac, -0.3 * bc, d - 118],
        [-0.42 * ac, -0.1 * bc, d - 128],
        [-0.42 * ac, -0.05 * bc, d - 152],
        [-0.32 * ac, -0.02 * bc, d - 182],
        [0.0, -0.16 * bc, d - 192],
        [0.22 * ac, -0.12 * bc, d - 178],
        [0.26 * ac, -0.22 * bc, d - 152],
    ]) + np.vstack([np.zeros(3)] + [jit(4) for _ in range(7)])
    duo_r = np.full(len(duo_pts), 11.0) * u(0.85, 1.15)
    duodenum = tube(grid, duo_pts, duo_r)
    _hollow_organ(tissue, duodenum, T.DUODENUM, T.DUODENUM_FLUID, T.DUODENUM_GAS, 3.0 / float(duo_r.mean()), rng)

    # -- pancreas: head in the C, body across the aorta, tail to the splenic hilum
    pan_pts = np.array([
        [-0.24 * ac, -0.08 * bc, d - 158],
        [-0.2 * ac, -0.12 * bc, d - 145],
        [-0.04 * ac, -0.3 * bc, d - 134],
        [0.2 * ac, -0.28 * bc, d - 126],
        [0.44 * ac, -0.06 * bc, d - 116],
        spleen_c + np.array([-30, -12, -8]),
    ]) + np.vstack([jit(3) for _ in range(5)] + [np.zeros(3)])
    pan_r = np.array([15, 15, 10.5, 10.5, 9.5, 8]) * u(0.85, 1.15)
    paint(tissue, tube(grid, pan_pts, pan_r), T.PANCREAS, allow=ORGAN_ALLOW)

    # -- adrenal glands: thin λ-shaped plates above and medial to the kidneys
    for side, apex, label in ((-1, np.array([-0.24 * ac, ys - 14, z_rk + 60]), T.RIGHT_ADRENAL),
                              (1, np.array([0.25 * ac, ys - 20, z_lk + 46]), T.LEFT_ADRENAL)):
        apex = apex + jit(3)
        thin = u(4.2, 5.2)
        limbs = []
        for spread in (-1, 1):
            rot = _rot((0, 0, 1), spread * u(18, 30) + side * 10) @ _rot((1, 0, 0), u(-15, 15))
            offset = rot @ np.array([0, 11.0, -6.0])
            limbs.append(ellipsoid(grid, apex + offset, np.array([thin, u(12, 15), u(15, 19)]), rot, wobble(rng, 0.05)))
        paint(tissue, union(*limbs), label, allow=ORGAN_ALLOW)

    # -- esophagus: down the posterior mediastinum, through the hiatus into the fundus
    eso_pts = np.array([
        [0.0, ys - 32, d + 220],
        [0.02 * ac, ys - 36, d + 60],
        [0.08 * ac, ys - 44, ld - 5],
        stomach_pts[0] + np.array([-0.25 * ac, -4, 4]),
    ]) + np.vstack([jit(3) for _ in range(3)] + [np.zeros(3)])
    eso_r = np.full(4, 8.0) * u(0.85, 1.15)
    eso = tube(grid, eso_pts, eso_r, flatten=(1.25, 0.8))
    paint(tissue, eso, T.ESOPHAGUS, allow=TUBE_ALLOW)
    if rng.random() < 0.5:
        paint(tissue, eso, T.ESOPHAGUS_LUMEN, level=0.3, allow=lut(T.ESOPHAGUS))

    # -- IVC: iliac confluence up behind the liver to the right atrium
    ivc_pts = np.array([
        [-0.16 * ac, ys - 24, z_bif - 12],
        [-0.17 * ac, ys - 28, d - 150],
        [-0.15 * ac, ys - 31, d - 95],
        [-0.11 * ac, ys - 38, d - 40],
        [-0.07 * ac, ys - 42, d + 6],
    ]) + np.array([jit(3) for _ in range(5)])
    ivc_r = np.array([11, 12, 12.5, 13, 13]) * u(0.8, 1.15)
    paint(tissue, tube(grid, ivc_pts, ivc_r, flatten=(1.25, 0.75)), T.IVC, allow=TUBE_ALLOW | lut(T.VEIN))

    # -- aorta: thoracic descending (left of the spine) to the bifurcation
    ao_pts = np.array([
        [0.16 * ac, ys - 14, d + 230],
        [0.14 * ac, ys - 18, d + 60],
        [0.1 * ac, ys - 30, d - 40],
        [aorta_x, aorta_y, d - 140],
        [0.06 * ac, aorta_y - 4, z_bif],
    ]) + np.vstack([jit(3) for _ in range(4)] + [np.zeros(3)])
    ao_r = np.array([12.5, 12.0, 11.0, 10.0, 8.5]) * u(0.85, 1.2)
    paint(tissue, tube(grid, ao_pts, ao_r), T.AORTA, allow=TUBE_ALLOW | lut(T.VEIN, T.ARTERY))
    return {"right_kidney_z": float(z_rk), "left_kidney_z": float(z_lk), "aortic_bifurcation_z": float(z_bif), "dome_z": float(d)}


def _hollow_organ(tissue: np.ndarray, field: Field | None, wall: int, fluid: int, gas: int, wall_frac: float, rng: np.random.Generator) -> None:
    """Labelled wall + lumen; the lumen is fluid with an anterior gas cap (patient supine)."""
    if field is None:
        return
    paint(tissue, field, wall, allow=ORGAN_ALLOW)
    level = 1.0 - wall_frac
    paint(tissue, field, fluid, level=level, allow=lut(wall))
    sub = tissue[field.box]
    lumen = (field.value < level) & (sub == fluid)
    rows = np.nonzero(lumen.any(axis=(0, 2)))[0]
    if rows.size and rng.random() < 0.85:
        cut = rows[0] + int((rows[-1] - rows[0]) * rng.uniform(0.1, 0.5))
        y_index = np.arange(sub.shape[1])[None, :, None]
        sub[lumen & (y_index < cut)] = gas
