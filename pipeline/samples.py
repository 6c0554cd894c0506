"""Read side of a prepared work folder: random access to coarse and fine samples.

    store = SampleStore(work)
    ids = store.case_ids("train", fold=0)
    s = store.load(ids[0], "coarse")   # s.image float32 [C,Z,Y,X], s.label uint8 [Z,Y,X] | None
    c = store.fine_crop(ids[0], jitter_mm=10, rng=np.random.default_rng(0))   # ROI-jittered fine crop

All records are read from the LMDB index once, at construction, and the environment is closed:
a SampleStore holds no open LMDB handle, so it can be passed to forked DataLoader workers. Each
array read afterwards is one file read, decoded by `pipeline.sample_arrays` (zstd storage, the
default) or memory-mapped (`prepare.sample_storage: npy`, and format 1 work folders); no pickle
anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import preprocess as pp
from pipeline import sample_arrays
from pipeline.case_index import CaseIndex, CaseIndexError
from pipeline.config import PrepareSection
from pipeline.errors import SegpipeError
from pipeline.tasks import TaskSpec, get_task

SPLITS = ("train", "val", "labeled", "unlabeled", "test", "all")


@dataclass
class Sample:
    case_id: str
    stage: str
    # float32 [C, Z, Y, X], normalised, canonical orientation; zeros for missing modalities
    # (a float16 memory map when prepared with `sample_storage: npy` and loaded with mmap=True)
    image: np.ndarray
    label: np.ndarray | None  # uint8 [Z, Y, X], internal consecutive ids; None for unlabeled cases
    modality_mask: np.ndarray  # bool [C]
    record: dict[str, Any]
    # region of the canonical grid this sample covers, edge coordinates ((z0, z1), (y0, y1), (x0, x1))
    region: tuple[tuple[float, float], ...]


class SampleStore:
    """Prepared samples of one work folder (see module docstring)."""

    def __init__(self, work: str | Path, *, allow_incomplete: bool = False) -> None:
        self.work = Path(work)
        try:
            with CaseIndex(self.work) as index:
                self.records: dict[str, dict[str, Any]] = index.records()
                meta = index.meta()
        except CaseIndexError as exc:
            raise SegpipeError(str(exc)) from None
        prepare = meta.get("prepare") or {}
        if not prepare.get("complete") and not allow_incomplete:
            raise SegpipeError(f"{self.work}: prepare did not finish; rerun `segpipe prepare` (it resumes)")
        fmt = int(prepare.get("sample_format", 1))
        if fmt > sample_arrays.SAMPLE_FORMAT:
            raise SegpipeError(f"{self.work}: samples in format {fmt}, this segpipe reads up to "
                               f"{sample_arrays.SAMPLE_FORMAT}; rerun `segpipe prepare` with this segpipe")
        self.meta = meta
        self.task: TaskSpec = get_task(prepare.get("task", "flare"))
        self.config = PrepareSection.model_validate(prepare["config"]) if "config" in prepare else None
        self.splits: dict[str, Any] = meta.get("splits") or {}
        self.folds: int = int(self.splits.get("folds", 0))

    # listing ---------------------------------------------------------------------------------
    def case_ids(self, split: str = "train", fold: int | None = 0) -> list[str]:
        """Sorted case ids. train/val: the labeled cases outside/inside `fold` (fold=None: all
        labeled cases are train, none val); labeled, unlabeled, test, all: by group."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
        recs = self.records
        if split == "all":
            return sorted(recs)
        if split in ("labeled", "unlabeled", "test"):
            return sorted(cid for cid, r in recs.items() if r["group"] == split)
        labeled = sorted(cid for cid, r in recs.items() if r["group"] == "labeled")
        if fold is None or self.folds == 0:
            return labeled if split == "train" else []
        if not 0 <= fold < self.folds:
            raise ValueError(f"fold {fold} out of range: this work folder has {self.folds} folds")
        in_fold = [cid for cid in labeled if recs[cid].get("fold") == fold]
        return in_fold if split == "val" else [cid for cid in labeled if recs[cid].get("fold") != fold]

    def record(self, case_id: str) -> dict[str, Any]:
        try:
            return self.records[case_id]
        except KeyError:
            raise SegpipeError(f"case {case_id} is not in the index of {self.work}") from None

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, case_id: object) -> bool:
        return case_id in self.records

    # reading ---------------------------------------------------------------------------------
    def _array(self, info: dict[str, Any], mmap: bool) -> np.ndarray:
        return sample_arrays.read(self.work / info["path"], info, mmap=mmap)

    def load_stored(self, case_id: str, stage: str = "coarse", *, mmap: bool = True) -> Sample:
        """The arrays as stored; for `fine` that includes the jitter allowance around the nominal crop."""
        if stage not in ("coarse", "fine"):
            raise ValueError(f"unknown stage {stage!r} (coarse or fine)")
        rec = self.record(case_id)
        part = rec[stage]
        image = self._array(part["image"], mmap)
        label = self._array(part["label"], mmap) if "label" in part else None
        region = tuple(tuple(float(v) for v in ax) for ax in part["region"])
        return Sample(case_id, stage, image, label, np.asarray(rec["modality_mask"], bool), rec, region)

    def load(self, case_id: str, stage: str = "coarse", *, mmap: bool = True) -> Sample:
        """Coarse: the whole volume at coarse size. Fine: the nominal crop (ROI + margin) at fine
        size, a zero-copy slice of the stored array. `mmap` matters for `npy` storage only."""
        sample = self.load_stored(case_id, stage, mmap=mmap)
        if stage == "coarse":
            return sample
        nominal = sample.record["fine"]["nominal"]
        return self._crop(sample, [(int(lo), int(hi)) for lo, hi in nominal])

    def _crop(self, sample: Sample, box: Sequence[tuple[int, int]]) -> Sample:
        sl = tuple(slice(lo, hi) for lo, hi in box)
        step = self._fine_step(sample)
        region = tuple((sample.region[a][0] + box[a][0] * step[a], sample.region[a][0] + box[a][1] * step[a])
                       for a in range(3))
        label = sample.label[sl] if sample.label is not None else None
        return Sample(sample.case_id, sample.stage, sample.image[(slice(None), *sl)], label,
                      sample.modality_mask, sample.record, region)

    @staticmethod
    def _fine_step(sample: Sample) -> list[float]:
        shape = sample.image.shape[-3:]
        return [(sample.region[a][1] - sample.region[a][0]) / shape[a] for a in range(3)]

    def fine_crop(self, case_id: str, *, jitter_mm: float | tuple[float, float] = 0.0,
                  margin_mm: float | tuple[float, float] | None = None, rng: np.random.Generator | None = None,
                  size: Sequence[int] | None = None) -> Sample:
        """A fine sample whose ROI margin is jittered per side, resized to `size` (default: fine size).

        `margin_mm` is the margin around the ROI box (the labels' foreground box, or the body box
        of unlabeled cases): a number, or (low, high) to draw each of the 6 sides from U(low, high).
        Default: the nominal margin ± `jitter_mm` (a number for ±j, or (inward, outward)).
        CSSN's augmentation is `margin_mm=(-40/3, 40)` half of the time. Margins are clamped to
        what is stored (nominal + `prepare.fine_jitter_mm`) and to the image. Arrays are float32
        and uint8 copies, resized as prepare resizes (trilinear; labels by `prepare.label_resampling`).
        """
        stored = self.load_stored(case_id, "fine")
        fine = stored.record["fine"]
        nominal_margin = float(fine["margin_mm"])
        if margin_mm is None:
            inward, outward = (jitter_mm, jitter_mm) if np.isscalar(jitter_mm) else jitter_mm  # type: ignore[misc]
            low, high = nominal_margin - float(inward), nominal_margin + float(outward)
        elif np.isscalar(margin_mm):
            low = high = float(margin_mm)  # type: ignore[arg-type]
        else:
            low, high = (float(v) for v in margin_mm)  # type: ignore[union-attr]
        rng = rng if rng is not None else np.random.default_rng()
        draws = rng.uniform(low, high, size=(3, 2)) if high > low else np.full((3, 2), low)
        step = self._fine_step(stored)
        spacing = fine["spacing"]
        shape = stored.image.shape[-3:]
        box = []
        for a in range(3):
            roi_lo = (fine["roi_box"][a][0] - stored.region[a][0]) / step[a]
            roi_hi = (fine["roi_box"][a][1] - stored.region[a][0]) / step[a]
            lo = round(roi_lo - draws[a, 0] / spacing[a])
            hi = round(roi_hi + draws[a, 1] / spacing[a])
            lo, hi = max(lo, 0), min(hi, shape[a])
            if hi - lo < 1:  # a large inward draw on a tiny ROI: keep at least one voxel
                centre = int(np.clip((roi_lo + roi_hi) / 2, 0, shape[a] - 1))
                lo, hi = centre, centre + 1
            box.append((lo, hi))
        crop = self._crop(stored, box)
        out_size = tuple(int(v) for v in (size if size is not None else fine["size"]))
        if tuple(crop.image.shape[-3:]) == out_size:
            image = np.array(crop.image, dtype=np.float32)
            label = np.array(crop.label) if crop.label is not None else None
        else:
            image = pp.resample_linear(crop.image, out_size)
            method = self.config.label_resampling if self.config is not None else "linear"
            label = pp.resample_labels(crop.label, out_size, method=method) if crop.label is not None else None
        return Sample(case_id, "fine", image, label, crop.modality_mask, crop.record, crop.region)
