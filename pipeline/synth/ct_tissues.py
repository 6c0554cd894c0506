"""CT tissue classes of the synthetic abdomen: which FLARE22 label each belongs to and its HU.

The tissue map is finer than the label map (kidney medulla, stomach gas, intrahepatic vessels,
bowel, bone, ...), so organs have internal structure and unlabeled look-alikes surround them.
HU follow a contrast-enhanced scan whose phase varies per case: enhancement scales with a
contrast strength, and arterial timing shifts it from veins and medulla to the aorta, so organ
intensities overlap between cases but never coincide within one.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class T(IntEnum):
    AIR = 0
    # 1..13 are the FLARE22 organs' parenchyma, same ids as the labels
    LIVER = 1
    RIGHT_KIDNEY = 2
    SPLEEN = 3
    PANCREAS = 4
    AORTA = 5
    IVC = 6
    RIGHT_ADRENAL = 7
    LEFT_ADRENAL = 8
    GALLBLADDER = 9
    ESOPHAGUS = 10
    STOMACH = 11
    DUODENUM = 12
    LEFT_KIDNEY = 13
    # organ sub-structures (labelled as their organ)
    LIVER_VESSEL = 14
    RIGHT_MEDULLA = 15
    LEFT_MEDULLA = 16
    STOMACH_FLUID = 17
    STOMACH_GAS = 18
    DUODENUM_FLUID = 19
    DUODENUM_GAS = 20
    ESOPHAGUS_LUMEN = 21
    # unlabelled background anatomy
    SUBCUT_FAT = 30
    VISCERAL_FAT = 31
    MUSCLE = 32
    CORTICAL_BONE = 33
    MARROW = 34
    DISC = 35
    CANAL = 36
    LUNG = 37
    HEART = 38
    MYOCARDIUM = 39
    VEIN = 40  # portal, splenic, superior mesenteric, renal, iliac veins
    ARTERY = 41  # superior mesenteric, renal, iliac arteries
    BOWEL_WALL = 42
    BOWEL_FLUID = 43
    BOWEL_GAS = 44
    STOOL = 45
    BLADDER = 46
    RENAL_SINUS = 47
    TABLE = 48
    SKIN = 49


N_TISSUES = 64

LABEL_OF = np.zeros(N_TISSUES, dtype=np.uint8)
for _t in range(1, 14):
    LABEL_OF[_t] = _t
LABEL_OF[[T.LIVER_VESSEL]] = 1
LABEL_OF[[T.RIGHT_MEDULLA]] = 2
LABEL_OF[[T.LEFT_MEDULLA]] = 13
LABEL_OF[[T.STOMACH_FLUID, T.STOMACH_GAS]] = 11
LABEL_OF[[T.DUODENUM_FLUID, T.DUODENUM_GAS]] = 12
LABEL_OF[[T.ESOPHAGUS_LUMEN]] = 10


def lut(*tissues: int, default: bool = False) -> np.ndarray:
    """Bool lookup table over tissue ids: True for `tissues` (or everything else if default)."""
    table = np.full(N_TISSUES, default, dtype=bool)
    table[list(tissues)] = not default
    return table


# what an abdominal organ may grow into: soft background inside the body cavity, never bone/wall/air
SOFT_BACKGROUND = (T.VISCERAL_FAT, T.BOWEL_WALL, T.BOWEL_FLUID, T.BOWEL_GAS, T.STOOL, T.LUNG, T.VEIN, T.ARTERY)
ORGAN_ALLOW = lut(*SOFT_BACKGROUND, *range(1, 22))

# (unenhanced HU, portal-venous enhancement, arterial enhancement) at contrast strength 1
_HU: dict[int, tuple[float, float, float]] = {
    T.AIR: (-1000, 0, 0),
    T.LIVER: (58, 50, 20),
    T.RIGHT_KIDNEY: (35, 130, 170),
    T.LEFT_KIDNEY: (35, 130, 170),
    T.RIGHT_MEDULLA: (30, 110, 40),
    T.LEFT_MEDULLA: (30, 110, 40),
    T.SPLEEN: (48, 65, 75),
    T.PANCREAS: (42, 45, 70),
    T.AORTA: (42, 125, 260),
    T.IVC: (40, 120, 30),
    T.RIGHT_ADRENAL: (28, 30, 35),
    T.LEFT_ADRENAL: (28, 30, 35),
    T.GALLBLADDER: (10, 0, 0),
    T.ESOPHAGUS: (42, 30, 30),
    T.ESOPHAGUS_LUMEN: (-300, 0, 0),
    T.STOMACH: (42, 55, 45),
    T.STOMACH_FLUID: (14, 0, 0),
    T.STOMACH_GAS: (-950, 0, 0),
    T.DUODENUM: (42, 55, 45),
    T.DUODENUM_FLUID: (18, 0, 0),
    T.DUODENUM_GAS: (-900, 0, 0),
    T.LIVER_VESSEL: (42, 125, 40),
    T.SUBCUT_FAT: (-105, 0, 0),
    T.VISCERAL_FAT: (-95, 0, 0),
    T.MUSCLE: (50, 12, 8),
    T.CORTICAL_BONE: (850, 0, 0),
    T.MARROW: (230, 10, 10),
    T.DISC: (85, 5, 5),
    T.CANAL: (20, 0, 0),
    T.LUNG: (-860, 0, 0),
    T.HEART: (42, 130, 200),
    T.MYOCARDIUM: (45, 60, 70),
    T.VEIN: (40, 125, 35),
    T.ARTERY: (42, 115, 230),
    T.BOWEL_WALL: (40, 50, 50),
    T.BOWEL_FLUID: (15, 0, 0),
    T.BOWEL_GAS: (-920, 0, 0),
    T.STOOL: (-250, 0, 0),
    T.BLADDER: (8, 0, 0),
    T.RENAL_SINUS: (-80, 0, 0),
    T.TABLE: (-350, 0, 0),
    T.SKIN: (30, 5, 5),
}


def hu_table(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """Per-case HU lookup table and the scan parameters that produced it."""
    contrast = float(rng.uniform(0.55, 1.15))  # injected dose × timing
    arterial = float(rng.beta(1.2, 3.0))  # 0 = portal venous, 1 = late arterial
    table = np.zeros(N_TISSUES, dtype=np.float32)
    for tissue, (native, venous, art) in _HU.items():
        enhancement = contrast * ((1 - arterial) * venous + arterial * art)
        jitter = 0.0 if native <= -200 or native >= 200 else rng.normal(0, 6)
        table[tissue] = native + enhancement + jitter
    table[T.LUNG] += rng.uniform(-40, 40)
    table[T.CORTICAL_BONE] += rng.uniform(-150, 250)
    table[T.MARROW] += rng.uniform(-60, 60)
    table[[T.SUBCUT_FAT, T.VISCERAL_FAT]] += rng.uniform(-12, 12)
    return table, {"contrast": contrast, "arterial": arterial}
