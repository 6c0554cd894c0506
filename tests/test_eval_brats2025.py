"""`segpipe evaluate brats --convention 2025` against the organisers' own package.

The oracle is `brats-evaluation` (PyPI, AGPL-3.0, panoptica underneath), run through its two
console scripts exactly as the organisers do (`brats-evaluate --config gli`, then
`brats-parse-metrics seg`). It pins numpy<2.3 and cc3d<4, which segpipe's runtime cannot
take, so it lives in its own venv: `make oracle` builds `.venv-oracle` (`make test` does it
first); SEGPIPE_BRATS_ORACLE may point at another venv's bin/ folder. Without it the oracle
tests skip; the hand-made cases below still run.

The one deliberate mapping: the package reports an infinite lesion-wise HD95 (no matched
lesion) as `inf`; segpipe reports 373, the value the package's parser gives every other
infinite HD95, because JSON has no infinity.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from evaluation.brats2025 import HD95_INF, region_scores
from pipeline.cli import main

ROOT = Path(__file__).resolve().parent.parent
ORACLE_BIN = Path(os.environ.get("SEGPIPE_BRATS_ORACLE", ROOT / ".venv-oracle" / "bin"))
SPACING = (1.0, 1.2, 0.9)  # ITK (x, y, z): anisotropic, so an axis-order slip shows
SHAPE = (40, 48, 52)  # (z, y, x)
FIELDS = {  # segpipe label field → the parser's column prefix
    "dice": "global_dsc", "nsd": "global_nsd", "hd95": "global_hd95",
    "lesionwise_dice": "lesionwise_dsc_mean", "lesionwise_nsd": "lesionwise_nsd_mean",
    "lesionwise_hd95": "lesionwise_hd95_mean",
    "n_tp": "all_instance_tp", "n_fp": "all_instance_fp", "n_fn": "all_instance_fn",
}


def _ball(shape, centre, radii) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((x - centre[2]) / radii[2]) ** 2 <= 1


def _tumour(rng, shape, n_lesions: int, cavity: bool) -> np.ndarray:
    """Lesions of edema (2) around a core of necrosis (1) and enhancing tumour (3), plus a cavity (4)."""
    seg = np.zeros(shape, np.uint8)
    for _ in range(n_lesions):
        c = rng.integers([6, 6, 6], [shape[0] - 6, shape[1] - 6, shape[2] - 6])
        r = rng.uniform(2.5, 6.0, 3)
        seg[_ball(shape, c, r) & (seg == 0)] = 2
        seg[_ball(shape, c + rng.integers(-1, 2, 3), r * rng.uniform(0.4, 0.7))] = 3
        if rng.random() < 0.7:
            seg[_ball(shape, c, r * rng.uniform(0.15, 0.35))] = 1
    if cavity:
        c = rng.integers([5, 5, 5], [shape[0] - 5, shape[1] - 5, shape[2] - 5])
        seg[_ball(shape, c, rng.uniform(2.0, 4.5, 3))] = 4
    return seg


def _perturb(rng, gt: np.ndarray) -> np.ndarray:
    """A plausible prediction: shifted, some lesions missed, some false-positive lesions."""
    pred = np.roll(gt, tuple(rng.integers(-2, 3, 3)), axis=(0, 1, 2))
    if rng.random() < 0.6:  # miss one predicted component of one label
        import cc3d

        label = int(rng.choice([1, 2, 3, 4]))
        cc, n = cc3d.connected_components(pred == label, connectivity=26, return_N=True)
        if n:
            pred[cc == rng.integers(1, n + 1)] = 0
    for _ in range(int(rng.integers(0, 3))):  # false positives
        c = rng.integers([4, 4, 4], [gt.shape[0] - 4, gt.shape[1] - 4, gt.shape[2] - 4])
        pred[_ball(gt.shape, c, rng.uniform(1.0, 3.0, 3))] = int(rng.choice([1, 2, 3, 4]))
    return pred


def _save(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(SPACING)
    image.SetOrigin((-10.0, 4.0, 2.5))
    sitk.WriteImage(image, str(path))


def _cases(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    ids = []
    for k in range(10):
        rng = np.random.default_rng(100 + k)
        gt = _tumour(rng, SHAPE, int(rng.integers(1, 4)), cavity=k % 2 == 0)
        if k == 0:
            p = np.zeros_like(gt)  # empty prediction
        elif k == 1:
            p = gt.copy()  # perfect
        elif k == 2:
            gt[gt == 3] = 2  # ET absent from the ground truth; prediction has one (false positive)
            p = _perturb(rng, gt)
            p[_ball(SHAPE, (20, 24, 26), (2, 2, 2))] = 3
        elif k == 3:
            gt[gt == 3] = 2  # ET absent from both → NaN / null
            p = _perturb(rng, gt)
            p[p == 3] = 0
        else:
            p = _perturb(rng, gt)
        cid = f"BraTS-GLI-{k:05d}-{100 if k % 2 == 0 else 0:03d}"
        ids.append(cid)
        _save(gt, ref / f"{cid}-seg.nii.gz")
        if k != 9:  # the last case has no prediction: the organisers' missing-case penalty
            _save(p, pred / f"{cid}.nii.gz")
    return ref, pred, ids


def _oracle(ref: Path, pred: Path, work: Path) -> dict[str, dict[str, str]]:
    summary, table = work / "summary.json", work / "parsed.csv"
    subprocess.run([str(ORACLE_BIN / "brats-evaluate"), "--config", "gli", "--ref_path", str(ref),
                    "--pred_path", str(pred), "--summary_json", str(summary)],
                   check=True, capture_output=True, timeout=600)
    subprocess.run([str(ORACLE_BIN / "brats-parse-metrics"), "seg", "--json_path", str(summary),
                    "--output_csv_path", str(table)], check=True, capture_output=True, timeout=600)
    with table.open() as fh:
        rows = {r["subject_id"]: r for r in csv.DictReader(fh)}
    return {sid.removesuffix(".nii.gz").removesuffix("-seg"): row for sid, row in rows.items()
            if sid not in ("mean", "std", "median")}


def _expected(cell: str, field: str) -> float | None:
    if cell == "" or cell.lower() == "nan":
        return None
    value = float(cell)
    if math.isinf(value) and "hd95" in field:
        return HD95_INF
    return value


@pytest.mark.skipif(not (ORACLE_BIN / "brats-evaluate").exists(),
                    reason=f"organisers' brats-evaluation not installed in {ORACLE_BIN} (make oracle)")
def test_2025_convention_equals_the_organisers_package(tmp_path):
    ref, pred, ids = _cases(tmp_path)
    out = tmp_path / "segpipe.json"
    assert main(["evaluate", "brats", "--convention", "2025", "--pred", str(pred), "--gt", str(ref),
                 "--json", str(out), "--workers", "1"]) == 0
    ours = {c["case"]: c for c in json.loads(out.read_text())["cases"]}
    theirs = _oracle(ref, pred, tmp_path)
    assert set(ours) == set(ids) and set(theirs) == set(ids)
    assert ours[ids[-1]]["status"] == "missing"
    compared, seen = 0, {"null": 0, "fp": 0, "fn": 0, "rc": 0, "373": 0}
    for cid in ids:
        for region, entry in ours[cid]["labels"].items():
            for field, column in FIELDS.items():
                want = _expected(theirs[cid][f"{column}_{region.lower()}"], field)
                got = entry[field]
                where = f"{cid} {region} {field}: segpipe {got}, organisers {want}"
                if want is None:
                    assert got is None, where
                    seen["null"] += 1
                else:
                    assert got is not None and abs(got - want) <= 1e-4, where
                compared += 1
            seen["fp"] += entry["n_fp"] > 0
            seen["fn"] += entry["n_fn"] > 0
            seen["rc"] += region == "RC" and entry["n_tp"] > 0
            seen["373"] += entry["hd95"] == HD95_INF
    assert compared == len(ids) * 6 * len(FIELDS)
    assert all(seen.values()), seen  # every edge case was exercised


def test_region_scores_by_hand():
    """Two ET lesions, one matched (shifted by a voxel), one missed, one false positive."""
    gt = np.zeros((20, 20, 20), bool)
    pred = np.zeros_like(gt)
    gt[2:6, 2:6, 2:6] = True  # 64 voxels
    pred[3:7, 2:6, 2:6] = True  # same cube, one slice lower: DSC 48/64 = 0.75
    gt[12:14, 12:14, 12:14] = True  # missed
    pred[15:17, 2:4, 14:16] = True  # false positive
    s = region_scores(gt, pred, (1.0, 1.0, 1.0))
    assert (s["n_tp"], s["n_fp"], s["n_fn"]) == (1, 1, 1)
    assert s["lesionwise_dice"] == pytest.approx(0.75)
    assert s["lesionwise_hd95"] == pytest.approx(1.0)
    assert s["dice"] == pytest.approx(2 * 48 / (72 + 72))
    empty = region_scores(gt, np.zeros_like(gt), (1.0, 1.0, 1.0))
    assert (empty["dice"], empty["nsd"], empty["hd95"], empty["lesionwise_hd95"]) == (0.0, 0.0, HD95_INF, HD95_INF)
    assert (empty["n_tp"], empty["n_fn"]) == (0, 2)
    none = region_scores(np.zeros_like(gt), np.zeros_like(gt), (1.0, 1.0, 1.0))
    assert none["dice"] is None and none["lesionwise_dice"] is None and none["n_fp"] == 0
