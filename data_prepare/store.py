"""Sample arrays on disk: `WORK/samples/<stage>/<case>_{image,label}.npy`.

Plain .npy files (memory-mapped by the reader) rather than blobs inside LMDB; why is measured
by `bench/loader.py --storage` and explained in the README. Every file is written under a
temporary name, fsynced and renamed, so a kill leaves no partial array under a final name;
the record pointing at the arrays is committed to the index only after the renames.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.fsutil import atomic_path, check_case_id

SAMPLES_DIRNAME = "samples"
STAGES = ("coarse", "fine")


def array_relpath(stage: str, case_id: str, kind: str) -> str:
    if stage not in STAGES or kind not in ("image", "label"):
        raise ValueError(f"bad sample array {stage}/{kind}")
    return f"{SAMPLES_DIRNAME}/{stage}/{check_case_id(case_id)}_{kind}.npy"


def write_array(work: Path, relpath: str, array: np.ndarray) -> dict[str, object]:
    """Atomically write one array; returns what the record says about it."""
    final = Path(work) / relpath
    with atomic_path(final) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    return {"path": relpath, "shape": [int(v) for v in array.shape], "dtype": str(array.dtype)}


def sweep(work: Path, referenced: set[str]) -> list[str]:
    """Delete temp files left by killed workers and arrays no record references."""
    removed = []
    root = Path(work) / SAMPLES_DIRNAME
    for stage in STAGES:
        folder = root / stage
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            rel = f"{SAMPLES_DIRNAME}/{stage}/{path.name}"
            if path.is_file() and (path.name.startswith(".") or rel not in referenced):
                path.unlink(missing_ok=True)
                removed.append(rel)
    return removed
