"""prepare on every raw layout: detection, discovery, per-case validation and what gets stored
(FLARE in three namings and an oblique permuted CT, BraTS legacy and 2023 with missing
modalities, nnU-Net raw, a flat .mha folder)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from prepare_fixtures import (
    OBLIQUE_PERMUTED,
    SMALL,
    brats_case,
    save,
    write_brats,
    write_flare,
    write_flat,
    write_nnunet,
)

from data_prepare.layouts import detect_layout, discover
from pipeline import preprocess as pp
from pipeline.cli import main
from pipeline.errors import SegpipeError
from pipeline.image_io import Geometry, Reorientation, from_canonical, read_image
from pipeline.samples import SampleStore


def prepare(data, work, *extra: str) -> int:
    return main(["prepare", "--data", str(data), "--work", str(work), "--workers", "1", *SMALL, *extra])


def report(work) -> dict:
    return json.loads((work / "prepare_report.json").read_text())


@pytest.mark.parametrize("naming", ["synth", "release", "cssn"])
def test_flare_namings_are_detected(tmp_path, naming):
    write_flare(tmp_path, labeled=2, unlabeled=2, validation=1, naming=naming)
    assert detect_layout(tmp_path) == "flare"
    disc = discover(tmp_path)
    groups = {c.case_id: c.group for c in disc.cases}
    assert groups == {"FLARE22_Tr_0001": "labeled", "FLARE22_Tr_0002": "labeled", "FLARE22_Unl_0001": "unlabeled",
                      "FLARE22_Unl_0002": "unlabeled", "FLARE22_Val_0001": "test"}
    assert not disc.problems
    tr = next(c for c in disc.cases if c.case_id == "FLARE22_Tr_0001")
    assert tr.label is not None and tr.label.name == "FLARE22_Tr_0001.nii.gz"
    assert tr.images["ct"].name == "FLARE22_Tr_0001_0000.nii.gz"


def test_flare_label_problems_are_per_case(tmp_path):
    write_flare(tmp_path, labeled=3, unlabeled=0)
    (tmp_path / "labels" / "FLARE22_Tr_0002.nii.gz").unlink()
    (tmp_path / "labels" / "FLARE22_Tr_0009.nii.gz").write_bytes(b"")
    disc = discover(tmp_path)
    assert [c.case_id for c in disc.cases] == ["FLARE22_Tr_0001", "FLARE22_Tr_0003"]
    reasons = dict(disc.problems)
    assert "no label file" in reasons["FLARE22_Tr_0002"]
    assert "without an image" in reasons["FLARE22_Tr_0009"]


def test_undetectable_folder_is_one_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(SegpipeError, match=r"cannot detect the data layout.*--layout"):
        detect_layout(tmp_path)
    assert prepare(tmp_path, tmp_path.parent / "w") == 2
    with pytest.raises(SegpipeError, match="does not exist"):
        detect_layout(tmp_path / "missing")


def test_oblique_ct_geometry_is_recorded_and_invertible(tmp_path):
    data, work = tmp_path / "data", tmp_path / "work"
    write_flare(data, labeled=2, unlabeled=1, direction=OBLIQUE_PERMUTED)
    assert prepare(data, work) == 0
    store = SampleStore(work)
    rec = store.record("FLARE22_Tr_0001")
    label_image = read_image(data / "labels" / "FLARE22_Tr_0001.nii.gz")
    reo = Reorientation.from_json(rec["geometry"])
    # the original geometry is the input's, exactly
    assert reo.original == Geometry.of(label_image)
    assert reo.perm != (0, 1, 2)  # the permuted direction really was permuted
    canonical = reo.array_to_canonical(sitk.GetArrayFromImage(label_image))
    # canonical axes are the closest to LPS: the direction is diagonal-dominant with positive diagonal
    d = reo.canonical.direction_matrix
    assert np.all(np.diag(d) > 0.8)
    # predictions in canonical space map back to the input grid exactly
    back = from_canonical(canonical, reo)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(label_image))
    assert Geometry.of(back) == Geometry.of(label_image)
    # the foreground box and fine ROI are in canonical voxels
    assert [tuple(b) for b in rec["foreground_box"]] == list(pp.bounding_box(canonical))
    assert rec["fine"]["roi"] == "foreground"
    fine = store.load("FLARE22_Tr_0001", "fine")
    assert fine.image.shape == (1, 12, 24, 24) and fine.label.shape == (12, 24, 24)
    assert set(np.unique(fine.label)) == {0, 1, 2, 3, 13}
    coarse = store.load("FLARE22_Tr_0001", "coarse")
    assert coarse.image.shape == (1, 16, 24, 24) and coarse.label.dtype == np.uint8


def test_brats_missing_modalities_and_label_conventions(tmp_path):
    data, work = tmp_path / "data", tmp_path / "work"
    write_brats(data, [
        ("BraTS20_Training_001", "legacy", ("flair", "t1", "t1ce", "t2"), True),
        ("BraTS20_Training_002", "legacy", ("t1", "t2"), True),
        ("BraTS-GLI-00003-000", "2023", ("t1ce",), True),
        ("BraTS-GLI-00004-000", "2023", ("flair", "t2"), False),
    ])
    assert detect_layout(data) == "brats"
    # legacy label 3 does not exist: rejected, never guessed
    bad = data / "BraTS20_Training_005"
    mods, label = brats_case(legacy=True)
    label[label == 1] = 3
    save(mods["t1"], bad / "BraTS20_Training_005_t1.nii.gz", spacing=(1, 1, 1))
    save(label, bad / "BraTS20_Training_005_seg.nii.gz", spacing=(1, 1, 1))
    # a modality on another grid: rejected with the reason
    skew = data / "BraTS20_Training_006"
    save(mods["t1"], skew / "BraTS20_Training_006_t1.nii.gz", spacing=(1, 1, 1))
    save(mods["t2"], skew / "BraTS20_Training_006_t2.nii.gz", spacing=(1, 1, 1.2))

    assert prepare(data, work) == 0  # failures do not change the exit code without --strict
    assert prepare(data, tmp_path / "w2", "--strict") == 1
    failed = {f["case"]: f["reason"] for f in report(work)["failed"]}
    assert set(failed) == {"BraTS20_Training_005", "BraTS20_Training_006"}
    assert "label values [3]" in failed["BraTS20_Training_005"] and "brats-legacy" in failed["BraTS20_Training_005"]
    assert "t2 grid differs from t1" in failed["BraTS20_Training_006"] and "spacing" in failed["BraTS20_Training_006"]

    store = SampleStore(work)
    assert store.task.name == "brats" and store.config.coarse_size == (16, 24, 24)
    full = store.load("BraTS20_Training_001", "coarse")
    assert full.image.shape[0] == 4 and full.modality_mask.tolist() == [True] * 4
    assert set(np.unique(full.label)) == {0, 1, 2, 3}  # legacy 4 → 3
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "BraTS20_Training_001" / "BraTS20_Training_001_seg.nii.gz")))
    rec = store.record("BraTS20_Training_001")
    assert rec["label_convention"] == "brats-legacy" and rec["label_map"]["4"] == 3
    assert rec["label_voxels"]["3"] == int((raw == 4).sum())

    two = store.load("BraTS20_Training_002", "fine")
    assert two.modality_mask.tolist() == [False, True, False, True]  # flair, t1, t1ce, t2
    assert not np.any(two.image[0]) and not np.any(two.image[2])  # missing → zeros
    assert np.any(two.image[1]) and np.any(two.image[3])
    stats = store.record("BraTS20_Training_002")["intensity"]["modalities"]
    assert stats["flair"] is None and stats["t1ce"] is None  # never in any statistic
    # z-score inside the brain mask of the present modalities, computed on the raw data
    t1 = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "BraTS20_Training_002" / "BraTS20_Training_002_t1.nii.gz")))
    t2 = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "BraTS20_Training_002" / "BraTS20_Training_002_t2.nii.gz")))
    brain = (t1 != 0) | (t2 != 0)
    assert stats["t1"]["mean"] == pytest.approx(float(t1[brain].mean()), rel=1e-5)
    assert stats["t1"]["std"] == pytest.approx(float(t1[brain].std()), rel=1e-4)

    new = store.record("BraTS-GLI-00003-000")
    assert new["label_convention"] == "brats-2023" and new["modality_mask"] == [False, False, True, False]
    assert store.case_ids("unlabeled") == ["BraTS-GLI-00004-000"]
    assert store.load("BraTS-GLI-00004-000", "fine").label is None
    assert store.record("BraTS-GLI-00004-000")["fine"]["roi"] == "body"  # brain box, not the whole volume


@pytest.mark.parametrize("task", ["flare", "brats"])
def test_nnunet_raw(tmp_path, task):
    data, work = tmp_path / "data", tmp_path / "work"
    write_nnunet(data, task=task, labeled=2, test=1)
    assert detect_layout(data) == "nnunet"
    disc = discover(data)
    assert disc.task == task
    assert [(c.case_id, c.group) for c in disc.cases] == [("case_000", "labeled"), ("case_001", "labeled"),
                                                         ("case_002", "test")]
    if task == "brats":  # channels are matched by name, not position: channel 0 is T1
        assert disc.cases[0].images["t1"].name == "case_000_0000.nii.gz"
        assert disc.cases[0].images["flair"].name == "case_000_0003.nii.gz"
    assert prepare(data, work) == 0
    store = SampleStore(work)
    assert store.task.name == task and store.case_ids("test") == ["case_002"]
    assert store.load("case_000", "coarse").label is not None


def test_nnunet_region_labels_need_an_explicit_map(tmp_path):
    write_nnunet(tmp_path, task="brats", labeled=1, test=0)
    meta_path = tmp_path / "Dataset501_Test" / "dataset.json"
    meta = json.loads(meta_path.read_text())
    meta["labels"] = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": 3}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(SegpipeError, match=r"region labels.*label_map"):
        discover(tmp_path)
    disc = discover(tmp_path, label_map={1: 2, 2: 1, 3: 3})  # nnU-Net BraTS21: 1 edema, 2 non-enhancing
    assert disc.cases[0].label_map == {1: 2, 2: 1, 3: 3, 0: 0}


def test_flat_mha_folder(tmp_path):
    data, work = tmp_path / "data", tmp_path / "work"
    write_flat(data, n=3, labeled=1)
    assert detect_layout(data) == "flat"
    assert prepare(data, work) == 0
    store = SampleStore(work)
    assert store.case_ids("labeled") == ["scan-00"] and store.case_ids("unlabeled") == ["scan-01", "scan-02"]
    assert store.record("scan-00")["sources"]["ct"]["relpath"] == "scan-00.mha"


def test_layout_override_is_obeyed(tmp_path):
    write_flare(tmp_path / "data", labeled=1, unlabeled=0)
    with pytest.raises(SegpipeError, match="no nnU-Net dataset"):
        discover(tmp_path / "data", "nnunet")
    assert prepare(tmp_path / "data", tmp_path / "work", "--layout", "nnunet") == 2


def test_config_task_must_match_the_data(tmp_path):
    write_brats(tmp_path / "data", [("BraTS20_Training_001", "legacy", ("t1",), True)])
    assert prepare(tmp_path / "data", tmp_path / "work", "--config", "flare") == 2
