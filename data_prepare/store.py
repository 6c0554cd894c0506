"""Sample arrays on disk: `WORK/samples/<stage>/<case>_{image,label}.{zst,npy}`.

Files rather than blobs inside LMDB (measured by `bench/loader.py --storage`); their encoding
(int16 + zstd by default, or memory-mappable float16 .npy) is `pipeline.sample_arrays`. Every
file is written under a temporary name, fsynced and renamed, so a kill leaves no partial array
under a final name; the record pointing at the arrays is committed to the index only after the
renames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import sample_arrays
from pipeline.fsutil import atomic_path, check_case_id

SAMPLES_DIRNAME = "samples"
STAGES = ("coarse", "fine")
KINDS = ("image", "label")


def array_relpath(stage: str, case_id: str, kind: str, storage: sample_arrays.Storage = "zstd") -> str:
    if stage not in STAGES or kind not in KINDS or storage not in sample_arrays.SUFFIX:
        raise ValueError(f"bad sample array {stage}/{kind} ({storage})")
    return f"{SAMPLES_DIRNAME}/{stage}/{check_case_id(case_id)}_{kind}{sample_arrays.SUFFIX[storage]}"


def write_array(work: Path, stage: str, case_id: str, kind: str, array: np.ndarray,
                storage: sample_arrays.Storage) -> dict[str, object]:
    """Atomically write one array; returns what the record says about it (path, shape, encoding, bytes)."""
    relpath = array_relpath(stage, case_id, kind, storage)
    final = Path(work) / relpath
    payload, info = sample_arrays.encode(array, kind, storage)
    with atomic_path(final) as tmp, open(tmp, "wb") as fh:
        sample_arrays.write(fh, payload)
    return {"path": relpath, **info, "bytes": final.stat().st_size}


def record_bytes(record: dict) -> int:
    """Bytes on disk of one case's arrays, as recorded (0 for format 1 records, which did not say)."""
    return sum(int(record.get(stage, {}).get(kind, {}).get("bytes", 0)) for stage in STAGES for kind in KINDS)


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
