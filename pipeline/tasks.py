"""Challenge task definitions: label ids and names, modalities, evaluation regions.

One place for these facts so that synth, prepare, training, evaluation and submission agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# FLARE22 abdominal organs (label id = position, 1-based); NSD tolerances in mm from the
# organisers' FLARE22_DSC_NSD_Eval.py.
FLARE22_LABELS: dict[int, str] = {
    1: "liver",
    2: "right_kidney",
    3: "spleen",
    4: "pancreas",
    5: "aorta",
    6: "inferior_vena_cava",
    7: "right_adrenal_gland",
    8: "left_adrenal_gland",
    9: "gallbladder",
    10: "esophagus",
    11: "stomach",
    12: "duodenum",
    13: "left_kidney",
}
FLARE22_NSD_TOLERANCE_MM: dict[int, float] = {
    1: 5, 2: 3, 3: 3, 4: 5, 5: 2, 6: 2, 7: 2, 8: 2, 9: 2, 10: 3, 11: 5, 12: 7, 13: 3,
}
# scored only inside the ground truth's z-range (half-open, top GT slice excluded)
FLARE22_ZRANGE_LABELS: frozenset[int] = frozenset({5, 6, 10})

# BraTS: modality order used everywhere inside segpipe
BRATS_MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
# file-name tags per layout for each modality
BRATS_LEGACY_TAGS: dict[str, str] = {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2"}
BRATS_2023_TAGS: dict[str, str] = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}

# Internal BraTS training labels are the 2023 convention (consecutive, softmax-friendly).
BRATS_LABELS: dict[int, str] = {1: "necrotic_core", 2: "edema", 3: "enhancing_tumor"}
# BraTS 2024+ post-treatment glioma adds the resection cavity (task.label_convention: brats2024)
BRATS_LABELS_2024: dict[int, str] = {**BRATS_LABELS, 4: "resection_cavity"}
LABEL_CONVENTIONS: tuple[str, ...] = ("2023", "legacy", "brats2024")
BRATS_REGIONS_2023: dict[str, tuple[int, ...]] = {"ET": (3,), "TC": (1, 3), "WT": (1, 2, 3)}
BRATS_REGIONS_LEGACY: dict[str, tuple[int, ...]] = {"ET": (4,), "TC": (1, 4), "WT": (1, 2, 4)}
# BraTS 2025 (organisers' `brats-evaluation`, config gli): the 2023 regions, the three labels on
# their own and label 4, the post-treatment resection cavity
BRATS_REGIONS_2025: dict[str, tuple[int, ...]] = {
    "ET": (3,), "TC": (1, 3), "WT": (1, 2, 3), "NETC": (1,), "SNFH": (2,), "RC": (4,),
}
# legacy raw label → internal label, stated explicitly (never inferred from the data)
BRATS_LEGACY_TO_2023: dict[int, int] = {0: 0, 1: 1, 2: 2, 4: 3}
BRATS_2023_TO_LEGACY: dict[int, int] = {v: k for k, v in BRATS_LEGACY_TO_2023.items()}


@dataclass(frozen=True)
class TaskSpec:
    name: str
    image_kind: str  # "ct" or "mri"
    modalities: tuple[str, ...]
    labels: dict[int, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Classes including background."""
        return max(self.labels, default=0) + 1


TASKS: dict[str, TaskSpec] = {
    "flare": TaskSpec("flare", "ct", ("ct",), FLARE22_LABELS),
    "brats": TaskSpec("brats", "mri", BRATS_MODALITIES, BRATS_LABELS),
}


def get_task(name: str, label_convention: str | None = None) -> TaskSpec:
    """The task; BraTS under the `brats2024` label convention also has label 4 (resection cavity)."""
    try:
        spec = TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None
    if name == "brats" and label_convention == "brats2024":
        return TaskSpec(spec.name, spec.image_kind, spec.modalities, BRATS_LABELS_2024)
    return spec
