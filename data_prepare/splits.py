"""Deterministic k-fold assignment of the labeled cases; unlabeled and test cases keep their group.

The assignment depends only on the sorted labeled case ids, `folds` and `seed`, so rerunning
prepare (or preparing the same data elsewhere) gives the same folds.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def assign_folds(labeled_ids: list[str], folds: int, seed: int) -> dict[str, int]:
    """case id → the fold in which it is a validation case."""
    ids = sorted(labeled_ids)
    if len(ids) < 2:
        return {}
    k = min(folds, len(ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    return {ids[int(j)]: i % k for i, j in enumerate(order)}


def split_summary(records: dict[str, dict[str, Any]], folds: int, seed: int) -> dict[str, Any]:
    labeled = sorted(cid for cid, r in records.items() if r["group"] == "labeled")
    assignment = assign_folds(labeled, folds, seed)
    k = max(assignment.values(), default=-1) + 1
    return {
        "folds": k,
        "seed": seed,
        "fold_of": assignment,
        "val": [sorted(c for c, f in assignment.items() if f == i) for i in range(k)],
        "labeled": labeled,
        "unlabeled": sorted(cid for cid, r in records.items() if r["group"] == "unlabeled"),
        "test": sorted(cid for cid, r in records.items() if r["group"] == "test"),
    }
