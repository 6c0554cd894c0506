"""Synthetic cases in the challenge layouts, for demo weights, tests and benchmarks.

Thin writers over `pipeline.synth` (anatomy) and `pipeline.synth.orient` (header orientation):
the label map is written in exactly the image's grid, so predictions can be compared voxel by
voxel after being written back in the input geometry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.image_io import Geometry
from pipeline.synth.dataset import write_volume
from pipeline.tasks import BRATS_2023_TAGS, BRATS_LEGACY_TAGS, BRATS_MODALITIES


def _reorient(canonical: Geometry, orientation: str, seed: int):
    from pipeline.synth.orient import reorientation_to

    return reorientation_to(canonical, orientation, np.random.default_rng(seed + 7919))


def write_flare_case(image_path: Path, label_path: Path | None, seed: int, *, size: str = "small",
                     orientation: str = "lps") -> Geometry:
    """`<id>_0000.nii.gz` (+ label) of one synthetic CT; returns the written geometry."""
    from pipeline.synth.flare import make_flare_case

    case = make_flare_case(seed, size)
    reo = _reorient(case.geometry, orientation, seed)
    write_volume(case.image, reo, image_path, "flare")
    if label_path is not None:
        write_volume(case.label, reo, label_path, "flare")
    return reo.original


def write_flare_dataset(root: Path, seeds: list[int], *, size: str = "small",
                        orientations: tuple[str, ...] = ("lps",), labels: bool = True) -> list[str]:
    """FLARE layout `root/images/<id>_0000.nii.gz`, `root/labels/<id>.nii.gz`; returns the ids."""
    ids = []
    for i, seed in enumerate(seeds):
        cid = f"FLARE22_Tr_{seed:04d}"
        write_flare_case(root / "images" / f"{cid}_0000.nii.gz", root / "labels" / f"{cid}.nii.gz" if labels else None,
                         seed, size=size, orientation=orientations[i % len(orientations)])
        ids.append(cid)
    return ids


def write_brats_case(case_dir: Path, seed: int, *, size: str = "small", orientation: str = "lps",
                     naming: str = "2023", modalities: tuple[str, ...] = BRATS_MODALITIES,
                     label: bool = True, atlas: str = "auto") -> Geometry:
    """`<ID>/<ID>-{t1c,t1n,t2f,t2w}[-seg].nii.gz` (naming 2023) or `<ID>_{flair,...}` (legacy)."""
    from pipeline.synth.brats import make_brats_case

    case = make_brats_case(seed, size, atlas)
    reo = _reorient(case.geometry, orientation, seed)
    cid = case_dir.name
    tags, sep = (BRATS_2023_TAGS, "-") if naming == "2023" else (BRATS_LEGACY_TAGS, "_")
    for modality in modalities:
        write_volume(case.images[modality], reo, case_dir / f"{cid}{sep}{tags[modality]}.nii.gz", "brats")
    if label:
        write_volume(case.label_in("2023" if naming == "2023" else "legacy"), reo, case_dir / f"{cid}{sep}seg.nii.gz", "brats")
    return reo.original


def write_brats_dataset(root: Path, seeds: list[int], *, size: str = "small",
                        orientations: tuple[str, ...] = ("lps",), label: bool = True) -> list[str]:
    ids = []
    for i, seed in enumerate(seeds):
        cid = f"BraTS-GLI-{seed:05d}-000"
        write_brats_case(root / cid, seed, size=size, orientation=orientations[i % len(orientations)], label=label)
        ids.append(cid)
    return ids
