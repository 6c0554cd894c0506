"""Random modality subsets for training on multi-modal tasks: the one draw of "which modalities
does this sample keep", shared by the plain networks' modality dropout (`coarse.modality_dropout`,
`fine.modality_dropout`) and the missing-modality methods' schedules (fine_seg/missing/).

`train.modality_subsets` chooses the distribution of the kept subset:
- `uniform` (default): every non-empty subset of the case's available modalities equally likely
  (1/15 each for a complete four-modality case). The missing-modality papers report the mean
  over the 15 subsets, so each of them gets the same share of training.
- `by_size`: the size k first (uniform), then a random k-subset: ShaSpec's random mode. On four
  modalities a single gets 1/16, a pair 1/24, a triple 1/16 and the full set 1/4 of the draws.

With the plain networks' dropout (probability p) `by_size` keeps a *strict* subset (k ~ U{1..n−1};
on complete cases the distribution segpipe used before this setting existed) and `uniform` draws from all non-empty subsets, the full set
included, so p = 1 gives every subset of a complete case 1/15 of the samples. The dropped
modalities are zeroed and marked missing through the modality mask.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from math import comb
from typing import Any

import numpy as np
import torch

Loader = Callable[[Any, str, int], Any]  # (source, case_id, item seed) → sample
SUBSET_SAMPLING = ("uniform", "by_size")


def draw_subset(available: Any, gen: torch.Generator, *, sampling: str = "uniform",
                max_size: int | None = None) -> np.ndarray:
    """A random non-empty subset (bool [N]) of the `available` modalities (bool [N], at least one),
    of at most `max_size` of them (default: all), drawn as `sampling` says (module docstring)."""
    avail = np.flatnonzero(np.asarray(available, bool))
    n = int(avail.size)
    if n == 0:
        raise ValueError("draw_subset: no available modality")
    hi = n if max_size is None else max(1, min(n, int(max_size)))
    if sampling == "uniform":  # size k with probability C(n, k) / Σ C(n, j): every subset equally likely
        weights = torch.tensor([float(comb(n, k)) for k in range(1, hi + 1)], dtype=torch.float64)
        k = 1 + int(torch.multinomial(weights, 1, generator=gen))
    elif sampling == "by_size":
        k = 1 + int(torch.randint(hi, (), generator=gen))
    else:
        raise ValueError(f"unknown modality subset sampling {sampling!r} ({', '.join(SUBSET_SAMPLING)})")
    out = np.zeros(len(np.asarray(available)), bool)
    out[avail[torch.randperm(n, generator=gen)[:k].numpy()]] = True
    return out


def drop_modalities(sample: Any, p: float, gen: torch.Generator, sampling: str = "uniform") -> Any:
    """The sample, or (probability p) a copy that keeps a random subset of its available modalities
    (`uniform`: any non-empty subset; `by_size`: a strict one)."""
    available = np.asarray(sample.modality_mask, bool)
    n = int(available.sum())
    if n < 2 or float(torch.rand((), generator=gen)) >= p:
        return sample
    mask = draw_subset(available, gen, sampling=sampling, max_size=n - 1 if sampling == "by_size" else None)
    if mask.sum() == n:  # the full available set: nothing to drop
        return sample
    image = np.array(sample.image, dtype=np.float32)
    image[~mask] = 0.0
    out = copy.copy(sample)  # never alter what the source holds (in-memory sources share objects)
    out.image, out.modality_mask = image, mask
    return out


def with_modality_dropout(load: Loader | None, stage: str, p: float, sampling: str = "uniform") -> Loader:
    """`load` (default: the prepared sample of `stage`) followed by `drop_modalities`, seeded by the
    item seed so that a resumed run draws the same subsets."""

    def loader(source: Any, case_id: str, seed: int) -> Any:
        sample = load(source, case_id, seed) if load is not None else source.load(case_id, stage)
        return drop_modalities(sample, p, torch.Generator().manual_seed(seed ^ 0xD80F), sampling)

    return loader
