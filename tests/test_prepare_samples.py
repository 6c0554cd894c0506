"""The read side the training stage uses: SampleStore listing, loads, ROI-jittered fine crops,
on a prepared pipeline.synth FLARE set (storage formats: tests/test_prepare_storage.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prepare_fixtures import write_flare

from pipeline import preprocess as pp
from pipeline.case_index import CaseIndex
from pipeline.cli import main
from pipeline.errors import SegpipeError
from pipeline.samples import SampleStore

SETTINGS = ["--set", "prepare.coarse_size=[24,32,32]", "--set", "prepare.fine_size=[16,32,32]",
            "--set", "prepare.fine_jitter_mm=15"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("samples")
    data, work = root / "data", root / "work"
    from pipeline.synth import write_flare_dataset

    write_flare_dataset(data, cases=3, unlabeled=1, validation=1, size="small", seed=3)
    assert main(["prepare", "--data", str(data), "--work", str(work), "--workers", "2", *SETTINGS]) == 0
    return work


def test_splits_are_disjoint_complete_and_deterministic(work, tmp_path):
    store = SampleStore(work)
    labeled = store.case_ids("labeled")
    assert len(labeled) == 3 and store.folds == 3
    assert store.case_ids("unlabeled") == ["FLARE22_Unl_0001"]
    assert store.case_ids("test") == ["FLARE22_Val_0001"]
    seen_val = []
    for fold in range(store.folds):
        train, val = store.case_ids("train", fold), store.case_ids("val", fold)
        assert not set(train) & set(val) and sorted(train + val) == labeled
        seen_val += val
    assert sorted(seen_val) == labeled  # every labeled case is validated exactly once
    assert store.case_ids("train", None) == labeled and store.case_ids("val", None) == []
    with pytest.raises(ValueError, match="fold 9"):
        store.case_ids("val", 9)
    # same ids + seed → same folds, another seed → another assignment (fold-level, order-free)
    from data_prepare.splits import assign_folds

    assert assign_folds(labeled, 4, 0) == {c: store.record(c)["fold"] for c in labeled}  # k = min(4, 3)
    assert assign_folds(list(reversed(labeled)), 5, 0) == assign_folds(labeled, 5, 0)
    many = [f"case_{i:03d}" for i in range(50)]
    assert assign_folds(many, 5, 1) != assign_folds(many, 5, 0)


def test_load_matches_the_record(work):
    store = SampleStore(work)
    assert store.task.name == "flare" and store.config.fine_size == (16, 32, 32)
    cid = store.case_ids("train", 0)[0]
    coarse = store.load(cid, "coarse")
    assert coarse.image.dtype == np.float32 and coarse.image.flags.writeable
    assert coarse.image.shape == (1, 24, 32, 32) and coarse.label.shape == (24, 32, 32)
    assert coarse.label.dtype == np.uint8 and coarse.label.max() <= 13
    assert coarse.modality_mask.tolist() == [True]
    # normalised: inside the window the values are z-scores of the case
    stats = coarse.record["intensity"]
    assert coarse.image.max() <= (325 - stats["mean"]) / stats["std"] + 1e-3
    fine = store.load(cid, "fine")
    stored = store.load_stored(cid, "fine")
    (z0, z1), (y0, y1), (x0, x1) = stored.record["fine"]["nominal"]
    assert fine.image.shape == (1, 16, 32, 32)
    assert np.array_equal(fine.image, stored.image[:, z0:z1, y0:y1, x0:x1])
    assert np.array_equal(fine.label, stored.label[z0:z1, y0:y1, x0:x1])
    # the fine crop contains every organ of the coarse sample
    assert set(np.unique(coarse.label)) - {0} <= set(np.unique(fine.label))
    unl = store.load("FLARE22_Unl_0001", "fine")
    assert unl.label is None and unl.record["fine"]["roi"] == "body"


def test_fine_crop_jitter(work):
    store = SampleStore(work)
    cid = store.case_ids("labeled")[0]
    nominal = store.load(cid, "fine")
    same = store.fine_crop(cid, jitter_mm=0)
    assert np.array_equal(same.image, nominal.image) and np.array_equal(same.label, nominal.label)
    rng = np.random.default_rng(0)
    shapes, regions = set(), []
    for _ in range(6):
        crop = store.fine_crop(cid, jitter_mm=(10, 15), rng=rng)
        shapes.add(crop.image.shape)
        regions.append(crop.region)
        assert crop.label.shape == crop.image.shape[1:] and crop.label.dtype == np.uint8
        assert set(np.unique(crop.label)) <= set(range(14))
        assert not isinstance(crop.image, np.memmap)
    assert shapes == {(1, 16, 32, 32)}
    assert len({tuple(map(tuple, r)) for r in regions}) > 1  # it really jitters
    stored = store.load_stored(cid, "fine").region
    for r in regions:  # never outside what is stored
        assert all(stored[a][0] - 1e-6 <= r[a][0] < r[a][1] <= stored[a][1] + 1e-6 for a in range(3))
    # CSSN's augmentation: margin U(-40/3, 40) mm around the organs' box, clamped to the stored context
    cssn = store.fine_crop(cid, margin_mm=(-40 / 3, 40), rng=rng, size=(8, 16, 16))
    assert cssn.image.shape == (1, 8, 16, 16)


def test_fine_crop_resizes_like_prepare(work):
    """One way to resample: a resized crop is prepare's trilinear image and per-label linear +
    argmax labels (not nearest), here on the nominal crop halved."""
    store = SampleStore(work)
    assert store.config.label_resampling == "linear"
    cid = store.case_ids("labeled")[0]
    nominal = store.load(cid, "fine")
    half = store.fine_crop(cid, jitter_mm=0, size=(8, 16, 16))
    assert half.region == nominal.region
    assert np.allclose(half.image, pp.resample_linear(np.asarray(nominal.image), (8, 16, 16)), atol=1e-6)
    assert np.array_equal(half.label, pp.resample_labels(np.asarray(nominal.label), (8, 16, 16), method="linear"))
    assert not np.array_equal(half.label, pp.resample_labels(np.asarray(nominal.label), (8, 16, 16), method="nearest"))


def test_an_unfinished_prepare_is_refused(tmp_path):
    data, work = tmp_path / "data", tmp_path / "work"
    write_flare(data, labeled=2, unlabeled=0)
    assert main(["prepare", "--data", str(data), "--work", str(work), "--workers", "1", *SETTINGS]) == 0
    with CaseIndex(work, writable=True) as index:
        index.set_meta("prepare", {**index.get_meta("prepare"), "complete": False})
    with pytest.raises(SegpipeError, match="did not finish"):
        SampleStore(work)
    assert len(SampleStore(work, allow_incomplete=True)) == 2
    with pytest.raises(SegpipeError, match="no case index"):
        SampleStore(tmp_path / "nowhere")
