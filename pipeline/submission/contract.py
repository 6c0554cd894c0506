"""Check a prediction folder against the challenge contract before it leaves the machine.

Per expected case (from the input folder, planned exactly as `segpipe predict` plans it):
the file exists under the contract's name, holds an integer label image whose values are in
the task's label set, and has the input's size, spacing, origin and direction. Files that
match no input case are errors too (the organisers match by name; a stray file is a typo).
Every problem is one line naming the file and the reason; one bad case never hides the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import SegpipeError

INTEGER_PIXELS = ("8-bit unsigned integer", "8-bit signed integer", "16-bit unsigned integer",
                  "16-bit signed integer", "32-bit unsigned integer", "32-bit signed integer")


def label_set(task: str, convention: str = "2023") -> set[int]:
    from pipeline.tasks import BRATS_2023_TO_LEGACY, get_task

    labels = {0, *get_task(task, convention).labels}
    if task == "brats" and convention == "legacy":
        labels = {BRATS_2023_TO_LEGACY[v] for v in labels}
    return labels


@dataclass
class CheckResult:
    expected: dict[str, Path] = field(default_factory=dict)  # case id → prediction file
    problems: list[str] = field(default_factory=list)
    checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def _same_geometry(a, b, tol: float = 1e-4) -> str | None:
    if a.GetSize() != b.GetSize():
        return f"size {a.GetSize()} != input {b.GetSize()}"
    for what, x, y in (("spacing", a.GetSpacing(), b.GetSpacing()), ("origin", a.GetOrigin(), b.GetOrigin()),
                       ("direction", a.GetDirection(), b.GetDirection())):
        if not np.allclose(x, y, rtol=0, atol=tol * max(1.0, float(np.abs(y).max()))):
            return f"{what} {tuple(round(v, 5) for v in x)} != input {tuple(round(v, 5) for v in y)}"
    return None


def _read_info(path: Path):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


def check_case(pred: Path, reference: Path | None, allowed: set[int]) -> str | None:
    """None if `pred` is a valid label image on `reference`'s grid, else the reason."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(pred))
    except RuntimeError as exc:
        return f"unreadable ({' '.join(str(exc).split())[:120]})"
    if image.GetNumberOfComponentsPerPixel() != 1:
        return f"{image.GetNumberOfComponentsPerPixel()} components per voxel, expected 1"
    if image.GetPixelIDTypeAsString() not in INTEGER_PIXELS:
        return f"pixel type {image.GetPixelIDTypeAsString()}, expected an integer label image (uint8)"
    values = {int(v) for v in np.unique(sitk.GetArrayViewFromImage(image))}
    extra = sorted(values - allowed)
    if extra:
        return f"labels {extra} are not in the task's label set {sorted(allowed)}"
    if reference is not None:
        try:
            ref = _read_info(reference)
        except RuntimeError as exc:
            return f"input {reference.name} unreadable ({' '.join(str(exc).split())[:80]})"
        problem = _same_geometry(image, ref)
        if problem:
            return f"geometry differs from {reference.name}: {problem}"
    return None


def _listing(pred: Path, mode: str) -> list[str]:
    """Prediction files relative to `pred` (grand-challenge: everything below it; else top level)."""
    if mode == "grand-challenge":
        return sorted(p.relative_to(pred).as_posix() for p in pred.rglob("*")
                      if p.is_file() and not p.name.startswith("."))
    return sorted(p.name for p in pred.iterdir() if not p.name.startswith("."))


def check_predictions(task: str, pred: str | Path, inputs: str | Path | None, *, convention: str = "2023",
                      mode: str | None = None, gc_output_slug: str | None = None) -> CheckResult:
    """The contract check of a whole folder. Without `inputs` only names/types/labels are checked.
    `mode` defaults to the task's own (flare: flat `<case>.nii.gz`, brats: `<ID>.nii.gz`);
    grand-challenge expects `images/<output slug>/<uuid>.mha`."""
    from pipeline.image_io import image_suffix
    from pipeline.inference.modes import plan_cases

    pred = Path(pred)
    mode = mode or ("flare" if task == "flare" else "brats")
    suffix = ".mha" if mode == "grand-challenge" else ".nii.gz"
    if not pred.is_dir():
        raise SegpipeError(f"prediction folder {pred}: not a folder")
    allowed = label_set(task, convention)
    result = CheckResult()
    references: dict[str, Path | None] = {}  # expected file, relative to pred → the input whose grid it takes
    if inputs is not None:
        plan = plan_cases(inputs, pred, mode, gc_output_slug=gc_output_slug)
        for case in plan.cases:
            result.expected[case.case_id] = case.output
            present = case.present
            references[case.output.relative_to(pred).as_posix()] = next(iter(present.values())) if present else None
        for problem in plan.problems:
            result.problems.append(f"input {problem.case_id}: {problem.reason}")
            if problem.output is not None:
                result.expected[problem.case_id] = problem.output
                references[problem.output.relative_to(pred).as_posix()] = problem.reference
        for case_id, out in sorted(result.expected.items()):
            if not out.is_file():
                result.problems.append(f"{out.relative_to(pred).as_posix()}: missing (no prediction for input case {case_id})")
    files = _listing(pred, mode)
    if not files:
        result.problems.append(f"{pred}: no prediction files")
    for name in files:
        path = pred / name
        if path.is_dir() or image_suffix(path) != suffix:
            contract = "images/<slug>/<uuid>.mha" if mode == "grand-challenge" else "<case>.nii.gz"
            result.problems.append(f"{name}: not a {suffix} file (the contract is {contract})")
            continue
        if inputs is not None and name not in references:
            result.problems.append(f"{name}: matches no input case (expected names: "
                                   f"{', '.join(sorted(references)[:3])}{', …' if len(references) > 3 else ''})")
            continue
        if task == "flare" and name.endswith("_0000.nii.gz"):
            result.problems.append(f"{name}: FLARE outputs drop the _0000 channel suffix")
            continue
        reason = check_case(path, references.get(name), allowed)
        result.checked += 1
        if reason:
            result.problems.append(f"{name}: {reason}")
    return result
