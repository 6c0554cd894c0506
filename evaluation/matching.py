"""Pair prediction files with ground-truth files by case name, as the organisers do.

The case id is the file name without its image suffix. Ground truth may also be named
`<id>-seg` / `<id>_seg` or sit in a case folder (`<id>/<id>-seg.nii.gz`, the BraTS layout).
A ground truth without a prediction is a *missing* case (scored 0); a prediction without
ground truth is *unmatched* (reported, not scored).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import SegpipeError
from pipeline.fsutil import check_case_id
from pipeline.image_io import image_suffix, strip_image_suffix

_SEG_TAGS = ("-seg", "_seg")


@dataclass(frozen=True)
class CasePair:
    case: str
    gt: Path
    pred: Path | None  # None: no prediction for this case


@dataclass
class Matching:
    pairs: list[CasePair] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)  # prediction files without ground truth

    @property
    def missing(self) -> list[str]:
        return [p.case for p in self.pairs if p.pred is None]


def _case_id(path: Path) -> str:
    name = strip_image_suffix(path)
    for tag in _SEG_TAGS:
        if name.endswith(tag):
            return name[: -len(tag)]
    return name


def _index(folder: Path, *, role: str, nested: bool) -> dict[str, Path]:
    if not folder.is_dir():
        raise SegpipeError(f"{role} folder {folder}: not a directory")
    found: dict[str, Path] = {}
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if nested:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            candidates += sorted(p for p in sub.iterdir() if p.is_file() and _case_id(p) == sub.name)
    for path in candidates:
        if image_suffix(path) is None:
            continue
        case = _case_id(path) if role == "ground-truth" else strip_image_suffix(path)
        try:
            check_case_id(case)
        except SegpipeError as exc:
            raise SegpipeError(f"{role} file {path.name}: {exc}") from None
        if case in found:
            raise SegpipeError(f"{role} folder {folder}: case {case} appears twice ({found[case].name}, {path.name})")
        found[case] = path
    return found


def match_cases(pred_dir: str | Path, gt_dir: str | Path) -> Matching:
    gts = _index(Path(gt_dir), role="ground-truth", nested=True)
    if not gts:
        raise SegpipeError(f"ground-truth folder {gt_dir}: no image files found")
    preds = _index(Path(pred_dir), role="prediction", nested=False)
    pairs = [CasePair(case, gts[case], preds.get(case)) for case in sorted(gts)]
    return Matching(pairs=pairs, unmatched=sorted(set(preds) - set(gts)))
