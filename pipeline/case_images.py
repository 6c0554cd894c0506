"""One case's images as prepare and predict both read them: every file readable, 3D and finite
(pipeline.image_io.read_image), the modalities on one grid within `tolerance`, each channel
reoriented (losslessly) to the canonical (z, y, x) orientation of the first present modality.

A problem raises CaseError naming the case and the file. Prepare adds the label and the
file hashes on top (data_prepare.validate.load_case); predict uses this as it is, so both read
an image the same way."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipeline.errors import CaseError, ImageError
from pipeline.image_io import Geometry, Reorientation, read_image, reorientation_for


class CanonicalGrid:
    """Shape and spacing of the canonical (z, y, x) grid of anything that holds a `reorientation`."""

    reorientation: Reorientation

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        sp = self.reorientation.canonical.spacing
        return (sp[2], sp[1], sp[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.reorientation.canonical.shape_zyx


@dataclass
class CaseImages(CanonicalGrid):
    case_id: str
    channels: dict[str, np.ndarray | None]  # canonical (z, y, x), raw dtype; None = missing
    reorientation: Reorientation
    geometry: Geometry  # the grid every present modality shares (ITK order, as read)


def read_case_file(case_id: str, role: str, path: Path) -> sitk.Image:
    """read_image, with its problem reported as the case's: `case X: t1c file.nii.gz: reason`."""
    try:
        return read_image(path)
    except ImageError as exc:
        raise CaseError(case_id, f"{role} {Path(exc.path).name}: {exc.reason}") from None


def read_case_images(case_id: str, images: Mapping[str, Path | None], tolerance: float) -> CaseImages:
    """`images`: modality → file (None = missing), in the task's order."""
    present = {m: p for m, p in images.items() if p is not None}
    if not present:
        raise CaseError(case_id, "no image file")
    read: dict[str, sitk.Image] = {}
    ref_name, ref_geo = "", None
    for modality, path in present.items():
        image = read_case_file(case_id, modality, path)
        geo = Geometry.of(image)
        if ref_geo is None:
            ref_name, ref_geo = modality, geo
        else:
            diffs = ref_geo.differences(geo, tolerance)
            if diffs:
                raise CaseError(case_id, f"{modality} grid differs from {ref_name}: {'; '.join(diffs)}")
        read[modality] = image
    assert ref_geo is not None
    reo = reorientation_for(ref_geo)
    channels: dict[str, np.ndarray | None] = {m: None for m in images}
    for modality, image in read.items():
        view = sitk.GetArrayViewFromImage(image)
        canonical = reo.array_to_canonical(view)
        # identity orientation returns the view itself, which dies with the image
        channels[modality] = canonical.copy() if np.shares_memory(canonical, view) else canonical
    return CaseImages(case_id, channels, reo, ref_geo)
