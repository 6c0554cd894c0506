"""Training data: the sample-source protocol, seeded epoch plans, patch extraction, batches.

`SampleSource` is what the trainer needs from `pipeline.samples.SampleStore` (which satisfies
it); `MemorySource` holds in-memory samples for tests and benchmarks. Randomness is never taken
from global state: every item carries a seed derived from (seed, epoch, stream, index), so a
resumed run draws exactly what the uninterrupted run drew, on any number of workers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from pipeline.errors import CaseError
from pipeline.training.augment import augment
from pipeline.training.losses import IGNORE


class SampleLike(Protocol):
    image: np.ndarray  # float32 [C,Z,Y,X]
    label: np.ndarray | None  # uint8 [Z,Y,X]
    modality_mask: np.ndarray  # bool [C]


class SampleSource(Protocol):
    def case_ids(self, split: str = "train", fold: int = 0) -> list[str]: ...

    def load(self, case_id: str, stage: str = "coarse") -> SampleLike: ...


@dataclass
class MemorySample:
    image: np.ndarray
    label: np.ndarray | None
    modality_mask: np.ndarray
    record: dict = field(default_factory=dict)


@dataclass
class MemorySource:
    """Samples held in memory: {case_id: MemorySample} and {split: [case_id, ...]} (same for every fold)."""

    samples: dict[str, MemorySample]
    splits: dict[str, list[str]]

    def case_ids(self, split: str = "train", fold: int = 0) -> list[str]:
        if split == "all":
            return sorted(self.samples)
        return list(self.splits.get(split, []))

    def load(self, case_id: str, stage: str = "coarse") -> MemorySample:
        return self.samples[case_id]


def derive_seed(*parts: Any) -> int:
    """A stable 63-bit seed from any tuple of ints/strings (independent of PYTHONHASHSEED)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def epoch_plan(case_ids: list[str], count: int, seed: int, epoch: int, stream: str) -> list[tuple[str, int]]:
    """`count` (case_id, item_seed) pairs: concatenated seeded permutations of `case_ids`."""
    if not case_ids:
        return []
    ids = sorted(case_ids)
    out: list[tuple[str, int]] = []
    rnd = 0
    while len(out) < count:
        g = torch.Generator().manual_seed(derive_seed(seed, epoch, stream, rnd))
        out.extend(ids[int(i)] for i in torch.randperm(len(ids), generator=g))
        rnd += 1
    return [(cid, derive_seed(seed, epoch, stream, "item", i)) for i, cid in enumerate(out[:count])]


def rank_slice(plan: list[tuple[str, int]], rank: int, world: int, batch: int) -> list[tuple[str, int]]:
    """Items of `rank`: step s takes plan[(s·world + rank)·batch : +batch]."""
    steps = len(plan) // (world * batch)
    return [plan[(s * world + rank) * batch + j] for s in range(steps) for j in range(batch)]


def foreground_centre(label: np.ndarray, gen: torch.Generator, mode: str = "class") -> tuple[int, ...] | None:
    """A foreground voxel to centre a patch on, or None when the label map has no foreground.

    "class" (nnU-Net): a class drawn uniformly among the foreground classes present, then a voxel of
    that class, so a 200-voxel adrenal is centred on as often as a 200 000-voxel liver. "voxel": a
    uniformly random foreground voxel (each organ in proportion to its volume). Computed on the fly
    (one bincount and one comparison per item, a few ms for a 96×192×192 sample): no per-case cache
    to grow across epochs.
    """
    if mode not in ("class", "voxel"):
        raise ValueError(f"unknown foreground sampling {mode!r} (class, voxel)")
    flat = np.asarray(label).reshape(-1)
    where = np.flatnonzero(flat)
    if not where.size:
        return None
    if mode == "class":
        values = flat[where]
        present = np.flatnonzero(np.bincount(values))  # label 0 is not among the foreground values
        cls = int(present[int(torch.randint(present.size, (), generator=gen))])
        where = where[values == cls]
    idx = int(where[int(torch.randint(where.size, (), generator=gen))])
    return tuple(int(i) for i in np.unravel_index(idx, label.shape))


def forced_foreground(slot: int, batch_size: int, fg_p: float) -> bool:
    """nnU-Net's rule: the last round(batch·p)-ish slots of every batch are foreground-centred
    (slot ≥ round(batch·(1 − p)); at batch 2 and p 0.33 that is slot 1, i.e. half the patches)."""
    return fg_p > 0 and slot >= round(batch_size * (1 - fg_p))


def crop_or_pad(image: np.ndarray, label: np.ndarray | None, patch: tuple[int, int, int] | None,
                gen: torch.Generator, fg_p: float, *, fg_sampling: str = "class",
                force_fg: bool | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A `patch`-sized window, padded where the sample is smaller: image with each channel's
    minimum, label with background. The window is centred on a foreground voxel (chosen by
    `foreground_centre(fg_sampling)`) when `force_fg` says so, or, if `force_fg` is None, with
    probability `fg_p`; otherwise it is placed uniformly at random."""
    shape = image.shape[1:]
    if patch is None or tuple(patch) == tuple(shape):
        img = torch.from_numpy(np.array(image, dtype=np.float32))
        return img, (torch.from_numpy(np.array(label, dtype=np.uint8)) if label is not None else None)
    if force_fg is None:
        want_fg = label is not None and fg_p > 0 and float(torch.rand((), generator=gen)) < fg_p
    else:
        want_fg = label is not None and force_fg
    centre = foreground_centre(label, gen, fg_sampling) if want_fg else None
    starts = []
    for ax, (n, p) in enumerate(zip(shape, patch, strict=True)):
        hi = max(0, n - p)
        if centre is not None:
            s = min(max(int(centre[ax]) - p // 2, 0), hi)
        else:
            s = int(torch.randint(hi + 1, (), generator=gen))
        starts.append(s)
    sl = tuple(slice(s, s + p) for s, p in zip(starts, patch, strict=True))
    img = np.asarray(image[(slice(None), *sl)], dtype=np.float32)
    lab = np.asarray(label[sl], dtype=np.uint8) if label is not None else None
    pad = [(0, p - n) for n, p in zip(img.shape[1:], patch, strict=True)]
    if any(b for _, b in pad):
        lows = img.reshape(img.shape[0], -1).min(1) if img.size else np.zeros(img.shape[0], np.float32)
        img = np.stack([np.pad(c, pad, constant_values=float(v)) for c, v in zip(img, lows, strict=True)])
        lab = np.pad(lab, pad, constant_values=0) if lab is not None else None
    return torch.from_numpy(np.ascontiguousarray(img)), (torch.from_numpy(np.ascontiguousarray(lab)) if lab is not None else None)


class PatchDataset(torch.utils.data.Dataset):
    """Items for one epoch and one process: load (memory-mapped) → crop → augment. Nothing is cached."""

    def __init__(self, items: list[tuple[str, int]], load: Callable[[str, int], SampleLike], *,
                 patch: tuple[int, int, int] | None, fg_p: float, augment_cfg: Any, num_classes: int,
                 labeled: bool, fg_sampling: str = "class", batch_size: int | None = None) -> None:
        """`batch_size`: the loader's batch (items are batched in order), which turns on nnU-Net's
        last-of-batch foreground rule (`forced_foreground`); None → each item with probability `fg_p`."""
        self.items, self.load, self.patch, self.fg_p = items, load, patch, fg_p
        self.augment_cfg, self.num_classes, self.labeled = augment_cfg, num_classes, labeled
        self.fg_sampling, self.batch_size = fg_sampling, batch_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        case_id, seed = self.items[i]
        gen = torch.Generator().manual_seed(seed)
        sample = self.load(case_id, seed)
        label = sample.label if self.labeled else None
        if self.labeled and label is None:
            raise CaseError(case_id, "listed as labeled but has no label map")
        force = None if self.batch_size is None else forced_foreground(i % self.batch_size, self.batch_size, self.fg_p)
        img, lab = crop_or_pad(sample.image, label, self.patch, gen, self.fg_p, fg_sampling=self.fg_sampling,
                               force_fg=force)
        if lab is not None and int(lab.max()) >= self.num_classes:
            raise CaseError(case_id, f"label {int(lab.max())} outside 0..{self.num_classes - 1}")
        img, lab = augment(img, lab, gen, self.augment_cfg)
        if lab is None:
            lab = torch.full(img.shape[1:], IGNORE, dtype=torch.uint8)
        return {
            "image": img,
            "label": lab,
            "has_label": torch.tensor(self.labeled),
            "modality_mask": torch.as_tensor(np.asarray(sample.modality_mask, dtype=bool)),
            "case_id": case_id,
        }
