"""BraTS file naming, shared by prepare's case discovery and predict's mode detection: which
file is which sequence (`<ID>-t1c.nii.gz` 2023+, `<ID>_t1ce.nii.gz` legacy) and which folders
are BraTS case folders. Only names are read, never image contents."""

from __future__ import annotations

from pathlib import Path

from pipeline.image_io import image_suffix, strip_image_suffix
from pipeline.tasks import BRATS_2023_TAGS, BRATS_LEGACY_TAGS


def image_files(folder: Path) -> list[Path]:
    """Image files directly in `folder` (hidden files skipped), sorted; [] when unreadable."""
    try:
        return sorted(p for p in folder.iterdir() if p.is_file() and image_suffix(p) and not p.name.startswith("."))
    except OSError:
        return []


def subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def walk_dirs(root: Path, depth: int) -> list[Path]:
    """`root` and its sub-folders down to `depth` levels, breadth first."""
    out, frontier = [], [root]
    for _ in range(depth + 1):
        nxt = []
        for d in frontier:
            out.append(d)
            nxt.extend(subdirs(d))
        frontier = nxt
    return out


def brats_tag(path: Path) -> tuple[str, str] | None:
    """('legacy'|'2023'|'any', modality or 'seg') from a BraTS file name, else None."""
    stem = strip_image_suffix(path)
    for sep, convention, tags in (("-", "2023", BRATS_2023_TAGS), ("_", "legacy", BRATS_LEGACY_TAGS)):
        if sep not in stem:
            continue
        tag = stem.rsplit(sep, 1)[1].lower()
        for modality, t in tags.items():
            if tag == t:
                return convention, modality
        if tag == "seg":
            return "any", "seg"
    return None


def brats_case_dirs(root: Path) -> list[Path]:
    """Folders (directly under `root` or one level deeper) whose image files are mostly BraTS-named."""
    out = []
    for d in walk_dirs(root, 2)[1:]:
        files = image_files(d)
        if files and sum(brats_tag(f) is not None for f in files) >= max(1, len(files) // 2):
            out.append(d)
    return out
