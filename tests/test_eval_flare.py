"""FLARE22 DSC/NSD: our SimpleITK (z, y, x) pipeline against a direct transcription of the
organisers' rules on nibabel (x, y, z) arrays with the DeepMind reference package, plus the
CLI, the JSON/CSV schema and the bad-input paths."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from evaluation.flare import evaluate_case, evaluate_flare, flare_scores
from evaluation.matching import CasePair
from pipeline.tasks import FLARE22_LABELS, FLARE22_NSD_TOLERANCE_MM

nib = pytest.importorskip("nibabel")
sd_ref = pytest.importorskip("surface_distance")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::RuntimeWarning")

SPACING_XYZ = (0.9, 0.75, 2.5)  # anisotropic, as abdominal CT
DIRECTION = (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)  # RAI-style header, to show no reorientation happens


@pytest.fixture(autouse=True)
def _numpy2_aliases(monkeypatch):
    monkeypatch.setattr(np, "Inf", np.inf, raising=False)
    monkeypatch.setattr(np, "NaN", np.nan, raising=False)


def organ_case(seed: int, shape_zyx=(30, 48, 44), drop_gt=(), drop_pred=()) -> tuple[np.ndarray, np.ndarray]:
    """13 ellipsoid 'organs' (GT) and a perturbed prediction (shifted, resized, a spurious blob)."""
    rng = np.random.default_rng(seed)
    gt = np.zeros(shape_zyx, np.uint8)
    pred = np.zeros(shape_zyx, np.uint8)
    zz, yy, xx = np.ogrid[tuple(slice(0, n) for n in shape_zyx)]
    for label in FLARE22_LABELS:
        c = rng.uniform([4, 6, 6], np.array(shape_zyx) - [4, 6, 6])
        r = rng.uniform([1.5, 2.5, 2.5], [5, 9, 9])
        if label in (5, 6, 10):  # tubes along z
            r[0] = rng.uniform(8, 16)
        if label not in drop_gt:
            gt[(((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2) <= 1] = label
        if label not in drop_pred:
            c2 = c + rng.normal(0, 1.2, 3)
            r2 = r * rng.uniform(0.8, 1.2, 3)
            pred[(((zz - c2[0]) / r2[0]) ** 2 + ((yy - c2[1]) / r2[1]) ** 2 + ((xx - c2[2]) / r2[2]) ** 2) <= 1] = label
    return gt, pred


def write_label(path: Path, array_zyx: np.ndarray, spacing=SPACING_XYZ, direction=DIRECTION) -> Path:
    img = sitk.GetImageFromArray(array_zyx)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    img.SetOrigin((12.0, -40.0, 100.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def official_flare(gt_path: Path, pred_path: Path) -> dict[int, tuple[float, float]]:
    """The organisers' FLARE22_DSC_NSD_Eval.py logic, on nibabel arrays (x, y, z), unrounded."""
    gt_nii = nib.load(str(gt_path))
    spacing = gt_nii.header.get_zooms()
    gt = np.uint8(gt_nii.get_fdata())
    seg = np.uint8(nib.load(str(pred_path)).get_fdata())
    out = {}
    for i in FLARE22_LABELS:
        if np.sum(gt == i) == 0 and np.sum(seg == i) == 0:
            out[i] = (1.0, 1.0)
        elif np.sum(gt == i) == 0:
            out[i] = (0.0, 0.0)
        else:
            if i in (5, 6, 10):
                z = np.where(gt == i)[2]
                g, p = gt[:, :, z.min():z.max()] == i, seg[:, :, z.min():z.max()] == i
            else:
                g, p = gt == i, seg == i
            sd = sd_ref.compute_surface_distances(g, p, spacing)
            out[i] = (sd_ref.compute_dice_coefficient(g, p), sd_ref.compute_surface_dice_at_tolerance(sd, FLARE22_NSD_TOLERANCE_MM[i]))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_matches_the_official_rules_on_nibabel_arrays(tmp_path, seed):
    drop_gt = {9} if seed % 2 else {9, 12}  # gallbladder absent in GT (and pred for odd seeds)
    drop_pred = {9, 4} if seed % 2 else {4}  # pancreas missed by the prediction
    gt, pred = organ_case(seed, drop_gt=drop_gt, drop_pred=drop_pred)
    g = write_label(tmp_path / "gt" / "c.nii.gz", gt)
    p = write_label(tmp_path / "pred" / "c.nii.gz", pred)
    official = official_flare(g, p)
    result = evaluate_case(CasePair("c", g, p))
    assert result.status == "ok"
    for label, (dsc, nsd) in official.items():
        entry = result.labels[FLARE22_LABELS[label]]
        assert entry["id"] == label
        assert entry["dsc"] == round(dsc, 4) and entry["nsd"] == round(nsd, 4), (label, entry, dsc, nsd)
    # and unrounded, to 1e-6
    arr_gt = sitk.GetArrayFromImage(sitk.ReadImage(str(g)))
    arr_pred = sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
    raw = flare_scores(arr_gt, arr_pred, tuple(reversed(SPACING_XYZ)))
    for label, (dsc, nsd) in official.items():
        assert raw[label][0] == pytest.approx(dsc, abs=1e-6) and raw[label][1] == pytest.approx(nsd, abs=1e-6)
    assert raw[4] == (0.0, 0.0)  # present in GT, missed: 0 / 0
    assert raw[9] == ((1.0, 1.0) if seed % 2 else (0.0, 0.0))  # absent from both → 1/1; from GT only → 0/0


def test_zrange_crop_is_half_open_on_the_image_z_axis():
    gt = np.zeros((12, 20, 20), np.uint8)
    gt[3:9, 8:12, 8:12] = 5  # aorta on z = 3..8
    pred = gt.copy()
    pred[8, 4:16, 4:16] = 5  # wrong only on the top GT slice (excluded by [z_min, z_max))
    pred[9:12, 8:12, 8:12] = 5  # and above the GT range (outside the crop)
    pred[0:3, 8:12, 8:12] = 5  # and below it
    scores = flare_scores(gt, pred, (2.5, 0.8, 0.8))
    assert scores[5] == (1.0, 1.0)
    # the same error on a label without the crop is penalised
    scores_liver = flare_scores(np.where(gt == 5, 1, 0).astype(np.uint8), np.where(pred == 5, 1, 0).astype(np.uint8), (2.5, 0.8, 0.8))
    assert scores_liver[1][0] < 0.8
    # the crop is on the z axis (numpy axis 0), not on x: the same error along x counts
    gt_x = np.transpose(gt, (2, 1, 0)).copy()
    pred_x = np.transpose(pred, (2, 1, 0)).copy()
    assert flare_scores(gt_x, pred_x, (0.8, 0.8, 2.5))[5][0] < 0.8


def test_single_slice_gt_does_not_crash():
    gt = np.zeros((6, 10, 10), np.uint8)
    gt[2, 3:6, 3:6] = 10
    scores = flare_scores(gt, gt.copy(), (1.0, 1.0, 1.0))
    assert scores[10] == (1.0, 1.0)


def make_dataset(root: Path, n: int = 3) -> tuple[Path, Path]:
    for i in range(n):
        gt, pred = organ_case(20 + i)
        write_label(root / "gt" / f"FLARE22_Tr_{i:04d}.nii.gz", gt)
        write_label(root / "pred" / f"FLARE22_Tr_{i:04d}.nii.gz", pred)
    return root / "pred", root / "gt"


def test_missing_unmatched_and_failed_cases_do_not_stop_the_others(tmp_path):
    pred_dir, gt_dir = make_dataset(tmp_path, 4)
    (pred_dir / "FLARE22_Tr_0001.nii.gz").unlink()  # missing
    write_label(pred_dir / "extra_case.nii.gz", np.zeros((4, 4, 4), np.uint8))  # unmatched
    write_label(pred_dir / "FLARE22_Tr_0002.nii.gz", np.zeros((5, 5, 5), np.uint8))  # wrong size → failed
    (pred_dir / "FLARE22_Tr_0003.nii.gz").write_bytes(b"not a nifti")  # corrupt → failed
    res = evaluate_flare(pred_dir, gt_dir, workers=1)
    by_case = {c["case"]: c for c in res["cases"]}
    assert res["missing"] == ["FLARE22_Tr_0001"]
    assert res["unmatched"] == ["extra_case"]
    assert res["failed"] == ["FLARE22_Tr_0002", "FLARE22_Tr_0003"]
    assert "FLARE22_Tr_0002" in by_case["FLARE22_Tr_0002"]["error"] and "differs" in by_case["FLARE22_Tr_0002"]["error"]
    for cid in ("FLARE22_Tr_0001", "FLARE22_Tr_0002", "FLARE22_Tr_0003"):
        assert all(e["dsc"] == 0 and e["nsd"] == 0 for e in by_case[cid]["labels"].values())
    assert by_case["FLARE22_Tr_0000"]["status"] == "ok"
    assert by_case["FLARE22_Tr_0000"]["labels"]["liver"]["dsc"] > 0.3
    # means include the zero-scored cases, as a leaderboard would
    liver = [c["labels"]["liver"]["dsc"] for c in res["cases"]]
    assert res["mean"]["liver"]["dsc"] == pytest.approx(sum(liver) / 4)


def test_spacing_comes_from_the_ground_truth(tmp_path):
    gt, pred = organ_case(5)
    g = write_label(tmp_path / "gt" / "c.nii.gz", gt)
    p = write_label(tmp_path / "pred" / "c.nii.gz", pred, spacing=(1.0, 1.0, 1.0))
    result = evaluate_case(CasePair("c", g, p))
    official = official_flare(g, p)  # the organisers read zooms from the GT only
    assert result.labels["liver"]["nsd"] == round(official[1][1], 4)
    assert any("spacing" in w for w in result.extra["warnings"])


def test_cli_writes_schema_json_csv_and_table(tmp_path):
    pred_dir, gt_dir = make_dataset(tmp_path, 3)
    (pred_dir / "FLARE22_Tr_0002.nii.gz").unlink()
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "evaluate", "flare", "--pred", str(pred_dir), "--gt", str(gt_dir),
         "--json", str(out_json), "--csv", str(out_csv), "--workers", "2"],
        capture_output=True, text=True, timeout=120, env={"SEGPIPE_PROGRESS": "0", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "liver" in proc.stdout and "missing (1): FLARE22_Tr_0002" in proc.stdout
    doc = json.loads(out_json.read_text())
    assert set(doc) >= {"task", "metrics", "cases", "mean", "overall", "missing", "failed", "unmatched", "settings"}
    assert doc["task"] == "flare" and doc["metrics"] == ["dsc", "nsd"]
    assert [c["case"] for c in doc["cases"]] == ["FLARE22_Tr_0000", "FLARE22_Tr_0001", "FLARE22_Tr_0002"]
    assert list(doc["cases"][0]["labels"]) == list(FLARE22_LABELS.values())
    assert doc["cases"][0]["labels"]["right_kidney"]["id"] == 2
    assert set(doc["cases"][0]["labels"]["liver"]) == {"id", "dsc", "nsd"}
    assert doc["missing"] == ["FLARE22_Tr_0002"]
    assert doc["settings"]["nsd_tolerance_mm"]["duodenum"] == 7
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 3 and float(rows[0]["liver_dsc"]) == doc["cases"][0]["labels"]["liver"]["dsc"]
    # the process pool gave the same numbers as a serial run
    serial = evaluate_flare(pred_dir, gt_dir, workers=1)
    assert serial["cases"] == doc["cases"]


def test_cli_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipeline", "evaluate", "flare", "--pred", str(tmp_path), "--gt", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not a directory" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "pipeline", "evaluate", "flare"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--pred and --gt" in proc.stderr
