"""Deterministic archives of prediction folders (sorted entries, fixed timestamps), written atomically."""

from __future__ import annotations

import zipfile
from pathlib import Path

from pipeline.fsutil import atomic_path

_EPOCH = (1980, 1, 1, 0, 0, 0)


def zip_folder(folder: str | Path, dest: str | Path, names: list[str] | None = None) -> Path:
    """Zip `names` (default: every file) of `folder` flat into `dest`; the same files give the same bytes."""
    folder, dest = Path(folder), Path(dest)
    files = sorted(names) if names is not None else sorted(p.name for p in folder.iterdir() if p.is_file())
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        # .nii.gz is already compressed: storing is as small and much faster than deflating again
        for name in files:
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            with (folder / name).open("rb") as src, zf.open(info, "w") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
    return dest
