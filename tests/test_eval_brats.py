"""BraTS: legacy Dice/HD95 against medpy with nnU-Net's guards, 2023 full-volume HD95 against
DeepMind's package, lesion-wise scores against a direct full-volume transcription of the
2023 metrics algorithm, and hand-computed cases."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import cc3d
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from evaluation.brats import (
    HD95_PENALTY_2023,
    LEGACY_HD95_EMPTY,
    LESION_RULES,
    case_labels,
    evaluate_brats,
    full_scores_2023,
    legacy_scores,
    lesionwise_scores,
)

sd_ref = pytest.importorskip("surface_distance")
from medpy.metric import binary as medpy_binary  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::RuntimeWarning")


@pytest.fixture(autouse=True)
def _numpy2_aliases(monkeypatch):
    monkeypatch.setattr(np, "Inf", np.inf, raising=False)
    monkeypatch.setattr(np, "NaN", np.nan, raising=False)


def balls(shape, specs) -> np.ndarray:
    out = np.zeros(shape, bool)
    zz, yy, xx = np.ogrid[tuple(slice(0, n) for n in shape)]
    for c, r in specs:
        out |= ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) <= r * r
    return out


def tumour_case(seed: int, shape=(40, 44, 42), legacy=False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    et = 4 if legacy else 3

    def one(shift):
        arr = np.zeros(shape, np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            c = rng.uniform(10, np.array(shape) - 10) + shift
            r = rng.uniform(3, 8)
            arr[balls(shape, [(c, r)])] = 2
            arr[balls(shape, [(c + rng.normal(0, 1, 3), r * 0.6)])] = et
            arr[balls(shape, [(c + rng.normal(0, 1, 3), r * 0.3)])] = 1
        return arr

    gt = one(0)
    pred = np.where(ndimage.shift(gt, rng.normal(0, 1.2, 3), order=0) > 0, ndimage.shift(gt, rng.normal(0, 1.0, 3), order=0), 0)
    pred = pred.astype(np.uint8)
    c = rng.uniform(6, np.array(shape) - 6)
    pred[balls(shape, [(c, rng.uniform(1, 3))])] = et  # a false-positive blob
    return gt, pred


# ---- oracles ----------------------------------------------------------------------------
def nnunet_legacy(ref, pred, spacing):
    """nnU-Net Task082's compute_BraTS_dice / compute_BraTS_HD95 with medpy."""
    if ref.sum() == 0:
        dice = 1.0 if pred.sum() == 0 else 0.0
        hd = 0.0 if pred.sum() == 0 else 373.12866
        return dice, hd
    dice = medpy_binary.dc(pred, ref)
    hd = 373.12866 if pred.sum() == 0 else medpy_binary.hd95(pred, ref, spacing)
    return dice, hd


def official_lesionwise(pred, gt, spacing, dil, thresh):
    """The 2023 metrics' get_LesionWiseScores + averaging, on full arrays, as published."""
    struct = ndimage.generate_binary_structure(3, 2)
    gt_cc = cc3d.connected_components(gt, connectivity=26)
    pred_cc = cc3d.connected_components(pred, connectivity=26)
    dil_cc = cc3d.connected_components(ndimage.binary_dilation(gt, structure=struct, iterations=dil), connectivity=26)
    combined = np.zeros_like(dil_cc)
    for comp in range(1, dil_cc.max() + 1):
        tmp = (dil_cc == comp) * gt_cc
        combined[tmp > 0] = comp
    tp, rows = [], []
    for comp in range(1, combined.max() + 1):
        gt_tmp = combined == comp
        reach = ndimage.binary_dilation(gt_tmp, structure=struct, iterations=dil)
        hits = np.unique(pred_cc * reach)
        hits = hits[hits != 0]
        tp += list(hits)
        pred_tmp = np.isin(pred_cc, hits)
        dice = 2 * (pred_tmp & gt_tmp).sum() / (pred_tmp.sum() + gt_tmp.sum())
        hd = sd_ref.compute_robust_hausdorff(sd_ref.compute_surface_distances(gt_tmp, pred_tmp, spacing), 95)
        rows.append((len(hits), gt_tmp.sum() * np.prod(spacing), dice, 374.0 if np.isinf(hd) else hd))
    fp = len(np.unique(pred_cc[np.isin(pred_cc, [*tp, 0], invert=True)]))
    kept = [r for r in rows if r[1] > thresh]
    denom = len(kept) + fp
    if denom == 0:
        return {"lesionwise_dice": 1.0, "lesionwise_hd95": 0.0, "n_tp": 0, "n_fp": 0, "n_fn": 0}
    return {
        "lesionwise_dice": sum(r[2] for r in kept) / denom,
        "lesionwise_hd95": (sum(r[3] for r in kept) + 374 * fp) / denom,
        "n_tp": sum(1 for r in kept if r[0] > 0),
        "n_fp": fp,
        "n_fn": sum(1 for r in kept if r[0] == 0),
    }


# ---- legacy -----------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_legacy_matches_nnunet_with_medpy(seed):
    gt, pred = tumour_case(seed, legacy=True)
    if seed == 3:
        pred[pred == 4] = 0  # ET missed entirely
    if seed == 4:
        gt[gt == 4] = 0  # ET absent in GT, present in prediction
    labels = case_labels(gt, pred, (1.0, 1.0, 1.0), "legacy", None)
    for name, region in (("ET", (4,)), ("TC", (1, 4)), ("WT", (1, 2, 4))):
        dice, hd = nnunet_legacy(np.isin(gt, region), np.isin(pred, region), (1, 1, 1))
        assert labels[name]["dice"] == pytest.approx(dice, abs=1e-6)
        assert labels[name]["hd95"] == pytest.approx(hd, abs=1e-6)
        assert labels[name]["id"] == list(region)


def test_legacy_empty_rules():
    z = np.zeros((10, 10, 10), bool)
    m = z.copy()
    m[3:6, 3:6, 3:6] = True
    assert legacy_scores(z, z, (1, 1, 1)) == (1.0, 0.0)
    assert legacy_scores(z, m, (1, 1, 1)) == (0.0, LEGACY_HD95_EMPTY)
    assert legacy_scores(m, z, (1, 1, 1)) == (0.0, LEGACY_HD95_EMPTY)
    assert pytest.approx(math.sqrt(240**2 + 240**2 + 155**2), abs=1e-5) == LEGACY_HD95_EMPTY


# ---- 2023 ------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.5, 1.0, 0.8)])
def test_2023_full_volume_matches_deepmind(seed, spacing):
    gt, pred = tumour_case(10 + seed)
    for region in ((3,), (1, 3), (1, 2, 3)):
        g, p = np.isin(gt, region), np.isin(pred, region)
        dice, hd = full_scores_2023(g, p, spacing)
        ref_hd = sd_ref.compute_robust_hausdorff(sd_ref.compute_surface_distances(g, p, spacing), 95)
        assert hd == pytest.approx(ref_hd, abs=1e-6)
        assert dice == pytest.approx(sd_ref.compute_dice_coefficient(g, p), abs=1e-6)
    empty = np.zeros_like(gt, bool)
    assert full_scores_2023(empty, empty, spacing) == (1.0, 0.0)
    assert full_scores_2023(gt > 0, empty, spacing) == (0.0, HD95_PENALTY_2023)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("challenge", ["GLI", "MET"])
def test_lesionwise_matches_the_published_algorithm(seed, challenge):
    gt, pred = tumour_case(30 + seed)
    # small GT lesions (below 50 voxels), one of them found, and two lesions that dilation merges
    gt[balls(gt.shape, [((5, 5, 5), 1.5)])] = 3
    pred[balls(gt.shape, [((5, 6, 5), 1.2)])] = 3
    gt[balls(gt.shape, [((34, 36, 8), 2.5), ((34, 36, 14), 2.5)])] = 3
    if seed % 3 == 0:
        pred[np.isin(pred, (3,))] = 0  # ET missed: each lesion Dice 0, HD95 374
    spacing = (1.0, 1.0, 1.0) if seed % 2 else (1.2, 0.9, 1.0)
    rule = LESION_RULES[challenge]
    for region in ((3,), (1, 3), (1, 2, 3)):
        g, p = np.isin(gt, region), np.isin(pred, region)
        got = lesionwise_scores(g, p, spacing, rule)
        want = official_lesionwise(p, g, spacing, rule.dilation, rule.min_volume_mm3)
        assert got["n_tp"] == want["n_tp"] and got["n_fp"] == want["n_fp"] and got["n_fn"] == want["n_fn"], (got, want)
        assert got["lesionwise_dice"] == pytest.approx(want["lesionwise_dice"], abs=1e-6)
        assert got["lesionwise_hd95"] == pytest.approx(want["lesionwise_hd95"], abs=1e-6)


def test_lesionwise_hand_computed():
    shape = (30, 30, 30)
    rule = LESION_RULES["GLI"]
    empty = np.zeros(shape, bool)
    big = balls(shape, [((8, 8, 8), 4), ((22, 22, 22), 4)])  # two lesions of 257 voxels, far apart
    assert lesionwise_scores(empty, empty, (1, 1, 1), rule) == {"lesionwise_dice": 1.0, "lesionwise_hd95": 0.0, "n_tp": 0, "n_fp": 0, "n_fn": 0}
    missed = lesionwise_scores(big, empty, (1, 1, 1), rule)
    assert missed == {"lesionwise_dice": 0.0, "lesionwise_hd95": 374.0, "n_tp": 0, "n_fp": 0, "n_fn": 2}
    perfect = lesionwise_scores(big, big.copy(), (1, 1, 1), rule)
    assert perfect == {"lesionwise_dice": 1.0, "lesionwise_hd95": 0.0, "n_tp": 2, "n_fp": 0, "n_fn": 0}
    fp_only = lesionwise_scores(empty, balls(shape, [((15, 15, 15), 2)]), (1, 1, 1), rule)
    assert fp_only == {"lesionwise_dice": 0.0, "lesionwise_hd95": 374.0, "n_tp": 0, "n_fp": 1, "n_fn": 0}
    # one lesion found perfectly, one missed, one false positive: (1 + 0 + 0) / 3 and (0 + 374 + 374) / 3
    pred = balls(shape, [((8, 8, 8), 4), ((15, 3, 26), 1)])
    mixed = lesionwise_scores(big, pred, (1, 1, 1), rule)
    assert mixed["lesionwise_dice"] == pytest.approx(1 / 3) and mixed["lesionwise_hd95"] == pytest.approx(748 / 3)
    assert (mixed["n_tp"], mixed["n_fp"], mixed["n_fn"]) == (1, 1, 1)
    # a small GT lesion (≤ 50 mm³) is left out, and a prediction touching it is not a false positive
    tiny = balls(shape, [((15, 15, 15), 1)])  # 7 voxels
    assert lesionwise_scores(tiny, tiny.copy(), (1, 1, 1), rule)["n_fp"] == 0
    assert lesionwise_scores(tiny, tiny.copy(), (1, 1, 1), rule)["lesionwise_dice"] == 1.0  # no lesions left → 1


def write(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))


def test_cli_brats_lesionwise_with_case_folders(tmp_path):
    for i in range(2):
        gt, pred = tumour_case(50 + i)
        cid = f"BraTS-GLI-{i:05d}-000"
        write(tmp_path / "gt" / cid / f"{cid}-seg.nii.gz", gt)  # the BraTS 2023 training layout
        write(tmp_path / "gt" / cid / f"{cid}-t1c.nii.gz", gt.astype(np.float32))  # ignored
        if i == 0:
            write(tmp_path / "pred" / f"{cid}.nii.gz", pred)
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "evaluate", "brats", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
         "--convention", "2023", "--lesionwise", "--json", str(out), "--workers", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["task"] == "brats-2023" and doc["metrics"] == ["dice", "hd95", "lesionwise_dice", "lesionwise_hd95"]
    assert doc["missing"] == ["BraTS-GLI-00001-000"]
    missing = doc["cases"][1]["labels"]["ET"]
    assert missing == {"id": [3], "dice": 0.0, "hd95": 374.0, "lesionwise_dice": 0.0, "lesionwise_hd95": 374.0}
    assert set(doc["cases"][0]["labels"]) == {"ET", "TC", "WT"}
    assert doc["cases"][0]["labels"]["WT"]["n_tp"] >= 1
    assert doc["settings"]["lesionwise"] == {"challenge": "GLI", "dilation": 3, "min_volume_mm3": 50}


def test_evaluate_brats_legacy_flags_foreign_labels(tmp_path):
    gt, pred = tumour_case(60)  # 2023 labels (1/2/3) scored as legacy (1/2/4)
    write(tmp_path / "gt" / "c1.nii.gz", gt)
    write(tmp_path / "pred" / "c1.nii.gz", pred)
    res = evaluate_brats(tmp_path / "pred", tmp_path / "gt", convention="legacy", workers=1)
    assert any("outside the legacy convention" in w for w in res["cases"][0]["warnings"])
    assert res["cases"][0]["labels"]["ET"]["dice"] == 1.0  # no label 4 anywhere: both empty
