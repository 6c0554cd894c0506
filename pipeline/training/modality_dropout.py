"""Random modality dropout for the plain networks of multi-modal tasks (`coarse.modality_dropout`,
`fine.modality_dropout`): with probability p a training sample keeps only a random non-empty
strict subset of the modalities, the others zeroed and marked missing through the modality
mask (ShaSpec's random mode), so that a network trained on complete cases still works on any
subset a test case brings. The missing-modality methods have their own schedules (fine.missing).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np

Loader = Callable[[Any, str, int], Any]  # (source, case_id, item seed) → sample


def drop_modalities(sample: Any, p: float, rng: np.random.Generator) -> Any:
    """The sample, or (probability p) a copy with a random strict subset of its modalities kept."""
    n = len(sample.modality_mask)
    if n < 2 or rng.random() >= p:
        return sample
    keep = np.zeros(n, bool)
    keep[rng.choice(n, size=int(rng.integers(1, n)), replace=False)] = True
    mask = np.asarray(sample.modality_mask, bool) & keep
    if not mask.any():  # none of the kept modalities is available: leave the case as it is
        return sample
    image = np.array(sample.image, dtype=np.float32)
    image[~mask] = 0.0
    out = copy.copy(sample)  # never alter what the source holds (in-memory sources share objects)
    out.image, out.modality_mask = image, mask
    return out


def with_modality_dropout(load: Loader | None, stage: str, p: float) -> Loader:
    """`load` (default: the prepared sample of `stage`) followed by `drop_modalities`, seeded by the
    item seed so that a resumed run draws the same subsets."""

    def loader(source: Any, case_id: str, seed: int) -> Any:
        sample = load(source, case_id, seed) if load is not None else source.load(case_id, stage)
        return drop_modalities(sample, p, np.random.default_rng(seed ^ 0xD80F))

    return loader
