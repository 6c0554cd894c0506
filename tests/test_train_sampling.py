"""Patch sampling: nnU-Net's class-uniform foreground oversampling and its last-of-batch rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.training.data import (
    MemorySample,
    PatchDataset,
    crop_or_pad,
    forced_foreground,
    foreground_centre,
)


def _two_organs() -> np.ndarray:
    """A large organ (class 1, 8000 voxels) and a small one (class 2, 8 voxels) far apart."""
    lab = np.zeros((24, 48, 48), np.uint8)
    lab[2:22, 2:22, 2:22] = 1
    lab[20:22, 44:46, 44:46] = 2
    return lab


def test_class_sampling_picks_classes_uniformly_not_by_volume() -> None:
    lab = _two_organs()
    n = 400
    by_class = [int(lab[foreground_centre(lab, torch.Generator().manual_seed(s), "class")]) for s in range(n)]
    by_voxel = [int(lab[foreground_centre(lab, torch.Generator().manual_seed(s), "voxel")]) for s in range(n)]
    assert 0 not in by_class and 0 not in by_voxel
    # uniform over the two classes: 200 ± 4σ (σ = 10)
    assert 160 < by_class.count(2) < 240
    # by volume the small organ holds 8 / 8008 of the foreground voxels
    assert by_voxel.count(2) <= 3
    # every voxel of the drawn class is reachable, not only the first one
    assert len({foreground_centre(lab, torch.Generator().manual_seed(s), "class") for s in range(n)}) > 100


def test_class_sampling_skips_absent_classes_and_handles_empty_labels() -> None:
    lab = np.zeros((8, 8, 8), np.uint8)
    assert foreground_centre(lab, torch.Generator(), "class") is None
    lab[3, 4, 5] = 7  # only class 7 present: never an absent class 1..6
    assert foreground_centre(lab, torch.Generator().manual_seed(1), "class") == (3, 4, 5)
    with pytest.raises(ValueError, match="foreground sampling"):
        foreground_centre(lab, torch.Generator(), "organ")


def test_foreground_crops_contain_the_small_organ_half_the_time_and_are_seeded() -> None:
    lab = _two_organs()
    img = lab[None].astype(np.float32)
    hits = 0
    for s in range(200):
        a = crop_or_pad(img, lab, (8, 16, 16), torch.Generator().manual_seed(s), 1.0)
        b = crop_or_pad(img, lab, (8, 16, 16), torch.Generator().manual_seed(s), 1.0)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert int(a[1].max()) > 0
        hits += int((a[1] == 2).any())
    assert 70 < hits < 130
    voxel = sum(int((crop_or_pad(img, lab, (8, 16, 16), torch.Generator().manual_seed(s), 1.0,
                                 fg_sampling="voxel")[1] == 2).any()) for s in range(200))
    assert voxel < 10


def test_last_of_batch_rule_matches_nnunet() -> None:
    # nnU-Net: sample j of a batch is forced foreground iff not j < round(batch * (1 - p))
    assert [forced_foreground(j, 2, 0.33) for j in range(2)] == [False, True]
    assert [forced_foreground(j, 3, 0.33) for j in range(3)] == [False, False, True]
    assert [forced_foreground(j, 4, 0.33) for j in range(4)] == [False, False, False, True]
    assert [forced_foreground(j, 12, 0.33) for j in range(12)].count(True) == 4
    assert not any(forced_foreground(j, 2, 0.0) for j in range(2))
    assert all(forced_foreground(j, 2, 1.0) for j in range(2))


def test_dataset_forces_the_batch_tail_to_foreground() -> None:
    from pipeline.config import AugmentSection

    lab = np.zeros((16, 64, 64), np.uint8)
    lab[6:10, 60:63, 60:63] = 3  # a corner organ a random 8×16×16 crop rarely touches
    sample = MemorySample(lab[None].astype(np.float32), lab, np.ones(1, bool))
    items = [("c", s) for s in range(40)]
    kw = dict(patch=(8, 16, 16), fg_p=0.33, augment_cfg=AugmentSection(enabled=False), num_classes=4, labeled=True)
    ds = PatchDataset(items, lambda cid, seed: sample, batch_size=2, **kw)
    tail = [bool((ds[i]["label"] == 3).any()) for i in range(1, 40, 2)]
    head = [bool((ds[i]["label"] == 3).any()) for i in range(0, 40, 2)]
    assert all(tail) and sum(head) < 10
    per_item = PatchDataset(items, lambda cid, seed: sample, **kw)
    assert sum(bool((per_item[i]["label"] == 3).any()) for i in range(40)) < 30


def test_config_offers_the_two_sampling_modes() -> None:
    from pydantic import ValidationError

    from pipeline.config import StageTrainSection

    assert StageTrainSection().fg_sampling == "class"
    assert StageTrainSection(fg_sampling="voxel").fg_sampling == "voxel"
    with pytest.raises(ValidationError):
        StageTrainSection(fg_sampling="uniform")
