"""Bad cases fail alone, with a one-line reason, and `--on-error` decides what is written (issue #5)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from predict_fixtures import ct_volume, make_random_weights, save_image
from test_predict_modes import brats_case

from pipeline.config import PredictSection
from pipeline.errors import SegpipeError
from pipeline.inference.runner import run_predict

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("w")
    make_random_weights(root / "flare_demo")
    make_random_weights(root / "brats_demo", task="brats", coarse_size=(16, 16, 16), fine_size=(16, 16, 16))
    return root


def bad_flare_inputs(inp: Path) -> dict[str, sitk.Image]:
    """good, corrupt (truncated gzip), 4D, NaN; returns the written images by case."""
    images = {"good": save_image(ct_volume(), inp / "good_0000.nii.gz")}
    images["nan"] = save_image(np.where(ct_volume() > 0, np.nan, -1000.0).astype(np.float32), inp / "nan_0000.nii.gz")
    full = save_image(ct_volume(seed=3), inp / "corrupt_0000.nii.gz")
    data = (inp / "corrupt_0000.nii.gz").read_bytes()
    (inp / "corrupt_0000.nii.gz").write_bytes(data[: len(data) // 2])  # a copy interrupted half-way
    images["corrupt"] = full
    four = sitk.JoinSeries([sitk.GetImageFromArray(ct_volume())] * 2)
    sitk.WriteImage(four, str(inp / "fourd_0000.nii.gz"))
    (inp / "garbage_0000.nii.gz").write_bytes(gzip.compress(b"definitely not nifti" * 10))
    return images


def run_cli(inp: Path, out: Path, weights: Path, *extra: str) -> tuple[int, str]:
    """`segpipe predict` as a user runs it (fresh process): exit code and stderr."""
    proc = subprocess.run([sys.executable, "-m", "pipeline", "predict", "-i", str(inp), "-o", str(out),
                           "--weights", str(weights), "--device", "cpu", *extra],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "SEGPIPE_PROGRESS": "0"})
    return proc.returncode, proc.stderr


def test_on_error_empty_writes_a_mask_per_case_and_exits_nonzero(tmp_path, weights):
    inp, out = tmp_path / "in", tmp_path / "out"
    images = bad_flare_inputs(inp)
    before = {p.name: p.read_bytes() for p in inp.iterdir()}
    code, err = run_cli(inp, out, weights)
    assert code == 1, err
    for case, reason in (("nan", "non-finite voxel values"), ("corrupt", "truncated or corrupt"),
                         ("fourd", "expected a 3D image"), ("garbage", "corrupt or unreadable")):
        lines = [ln for ln in err.splitlines() if f"case {case}: " in ln and "ERROR" in ln]
        assert len(lines) == 1 and reason in lines[0] and f"{case}_0000.nii.gz" in lines[0], (case, err)
    assert "Traceback" not in err
    # good case predicted, bad ones get an empty mask in their input grid (garbage has no header)
    assert sorted(p.name for p in out.iterdir()) == ["corrupt.nii.gz", "fourd.nii.gz", "good.nii.gz", "nan.nii.gz"]
    for case in ("nan", "corrupt"):
        pred = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        src = sitk.ImageFileReader()
        src.SetFileName(str(inp / f"{case}_0000.nii.gz"))
        src.ReadImageInformation()  # the header is intact in both
        assert pred.GetSize() == src.GetSize() == images[case].GetSize() and pred.GetSpacing() == src.GetSpacing()
        assert pred.GetOrigin() == src.GetOrigin() and pred.GetPixelID() == sitk.sitkUInt8
        assert not sitk.GetArrayFromImage(pred).any()
    assert sitk.ReadImage(str(out / "fourd.nii.gz")).GetSize() == (36, 40, 24)
    assert {p.name: p.read_bytes() for p in inp.iterdir()} == before  # inputs untouched
    assert not list(out.glob(".*"))  # no temp files left behind


def test_on_error_skip_and_fail(tmp_path, weights):
    inp = tmp_path / "in"
    bad_flare_inputs(inp)
    result = run_predict(inp, tmp_path / "skip", PredictSection(weights=weights, device="cpu", on_error="skip"))
    assert result.exit_code == 1 and result.written == ["good"]
    assert sorted(c for c, _ in result.failed) == ["corrupt", "fourd", "garbage", "nan"]
    assert all("\n" not in reason for _, reason in result.failed)
    assert [p.name for p in (tmp_path / "skip").iterdir()] == ["good.nii.gz"]
    # cases run in name order and `corrupt` fails first: the run stops there, nothing written
    with pytest.raises(SegpipeError, match=r"case corrupt: .*truncated.*\(--on-error fail\)"):
        run_predict(inp, tmp_path / "fail", PredictSection(weights=weights, device="cpu", on_error="fail"))
    assert not list((tmp_path / "fail").glob("*.nii.gz")) if (tmp_path / "fail").exists() else True


def test_brats_geometry_mismatch_fails_that_case_only(tmp_path, weights):
    inp = tmp_path / "in"
    brats_case(inp, "BraTS-GLI-00001-000")
    bad = brats_case(inp, "BraTS-GLI-00002-000", modalities=("t1", "t2"))
    image = sitk.ReadImage(str(bad / "BraTS-GLI-00002-000-t2w.nii.gz"))
    image.SetOrigin((5.0, -239.0, 0.0))  # t2 shifted by 5 mm
    sitk.WriteImage(image, str(bad / "BraTS-GLI-00002-000-t2w.nii.gz"))
    brats_case(inp, "BraTS-GLI-00003-000", modalities=("flair",))
    out = tmp_path / "out"
    result = run_predict(inp, out, PredictSection(weights=weights, device="cpu"))
    assert result.exit_code == 1 and sorted(result.written) == ["BraTS-GLI-00001-000", "BraTS-GLI-00003-000"]
    [(case, reason)] = result.failed
    assert case == "BraTS-GLI-00002-000" and "grid differs" in reason and "origin" in reason
    assert sorted(p.name for p in out.iterdir()) == [f"BraTS-GLI-0000{i}-000.nii.gz" for i in (1, 2, 3)]
    assert not sitk.GetArrayFromImage(sitk.ReadImage(str(out / "BraTS-GLI-00002-000.nii.gz"))).any()


def test_weights_tampering_is_a_clear_error(tmp_path):
    w = make_random_weights(tmp_path / "w")
    (w / "coarse.json").write_text((w / "coarse.json").read_text() + " ")
    inp = tmp_path / "in"
    save_image(ct_volume(), inp / "a_0000.nii.gz")
    code, err = run_cli(inp, tmp_path / "out", w)
    assert code == 2 and err.strip().splitlines()[-1].startswith("segpipe predict: error: ")
    assert "coarse.json" in err.strip().splitlines()[-1] and "Traceback" not in err
