"""Modality subsets: the 15 non-empty subsets of {flair, t1, t1ce, t2}, dropout schedules (the
subset draw itself is pipeline.training.modality_dropout.draw_subset, shared with the plain
networks' modality dropout) and fixed per-case masks drawn at imbalanced missing rates
(PASSION's `mr2468` protocol).

Masks are bool tensors/arrays in segpipe's modality order (pipeline.tasks.BRATS_MODALITIES).
Every random draw takes an explicit generator, so training stays reproducible across resumes.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from pipeline.tasks import BRATS_MODALITIES
from pipeline.training.modality_dropout import draw_subset


def all_subsets(n: int = 4) -> list[tuple[int, ...]]:
    """Non-empty subsets of range(n), by size then lexicographically (singles first, full set last)."""
    return [c for k in range(1, n + 1) for c in itertools.combinations(range(n), k)]


def subset_mask(subset: Sequence[int], n: int = 4) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    m[list(subset)] = True
    return m


def subset_name(subset: Sequence[int], names: Sequence[str] = BRATS_MODALITIES) -> str:
    return "+".join(names[i] for i in subset)


def parse_subsets(text: str, names: Sequence[str] = BRATS_MODALITIES) -> list[tuple[int, ...]]:
    """`all` or a comma-separated list of `+`-joined modality names, e.g. `flair,t1ce+t2`."""
    if text.strip() == "all":
        return all_subsets(len(names))
    out = []
    for part in text.split(","):
        idx = []
        for name in part.strip().split("+"):
            if name not in names:
                raise ValueError(f"subset {part!r}: unknown modality {name!r} (known: {', '.join(names)})")
            idx.append(names.index(name))
        if not idx or len(set(idx)) != len(idx):
            raise ValueError(f"subset {part!r}: empty or repeated modality")
        out.append(tuple(sorted(idx)))
    return out


def random_subset_masks(available: torch.Tensor, gen: torch.Generator, *, max_keep: int | None = None,
                        keep_all_missing: int = 0, sampling: str = "uniform") -> torch.Tensor:
    """Per sample a random non-empty subset of its available modalities of at most
    min(#available − keep_all_missing, max_keep) of them, drawn as `sampling` says
    (pipeline.training.modality_dropout.draw_subset: `uniform` over the subsets, or `by_size`,
    ShaSpec's random mode). LCKD passes `keep_all_missing=1` so that at least one available
    modality is always dropped when possible."""
    out = torch.zeros_like(available, dtype=torch.bool)
    for b in range(available.shape[0]):
        n = int(available[b].sum())
        if n == 0:
            continue
        hi = max(1, n - keep_all_missing)
        if max_keep is not None:
            hi = max(1, min(hi, max_keep))
        out[b] = torch.from_numpy(draw_subset(available[b].cpu().numpy(), gen, sampling=sampling, max_size=hi))
    return out


def dropout_active(step: int, total_steps: int, warmup_fraction: float) -> bool:
    """Full-modality warm-up (ShaSpec's 80k of 180k iterations), then random subsets."""
    return step >= warmup_fraction * total_steps


def schedule_masks(available: torch.Tensor, step: int, total_steps: int, gen: torch.Generator, *,
                   warmup_fraction: float, p: float, keep_all_missing: int = 0,
                   sampling: str = "uniform") -> torch.Tensor:
    """The training mask of a batch: the available modalities during warm-up; afterwards each
    sample is reduced to a random non-empty subset with probability `p` (the dropout "temperature")."""
    available = available.bool()
    if not dropout_active(step, total_steps, warmup_fraction) or p <= 0:
        return available
    dropped = random_subset_masks(available, gen, keep_all_missing=keep_all_missing, sampling=sampling)
    use = torch.rand(available.shape[0], generator=gen) < p
    return torch.where(use[:, None], dropped, available)


def imbalanced_masks(case_ids: Sequence[str], missing_rates: Mapping[str, float], seed: int,
                     names: Sequence[str] = BRATS_MODALITIES) -> dict[str, np.ndarray]:
    """Fixed per-case availability at the given missing rates (PASSION's imbalanced split).

    Each modality is missing in round(rate·n) cases chosen at random, so the realised rates are
    exact; a case that would end up with nothing keeps the modality whose quota is least
    exceeded by keeping it (the least-missing one), so every case has at least one input.
    """
    for m, r in missing_rates.items():
        if m not in names or not 0.0 <= float(r) < 1.0:
            raise ValueError(f"missing rate {m}={r}: modality must be one of {', '.join(names)}, rate in [0, 1)")
    rng = np.random.default_rng(seed)
    ids = sorted(case_ids)
    n = len(ids)
    avail = np.ones((n, len(names)), dtype=bool)
    for j, name in enumerate(names):
        k = round(float(missing_rates.get(name, 0.0)) * n)
        avail[rng.permutation(n)[:k], j] = False
    order = np.argsort([float(missing_rates.get(name, 0.0)) for name in names], kind="stable")
    for i in np.flatnonzero(~avail.any(1)):
        avail[i, order[0]] = True
    return {cid: avail[i].copy() for i, cid in enumerate(ids)}


def groups_containing(available: np.ndarray, subsets: Sequence[Sequence[int]]) -> list[int]:
    """Indices of the subsets a case with `available` modalities can present (HGA's group loaders)."""
    return [g for g, s in enumerate(subsets) if all(bool(available[i]) for i in s)]
