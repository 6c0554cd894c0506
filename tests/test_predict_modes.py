"""Naming contracts of every mode, auto-detection and the MLCube `infer` entry (issue #5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from predict_fixtures import ct_volume, make_random_weights, save_image

from pipeline.cli import main
from pipeline.config import PredictSection
from pipeline.errors import SegpipeError
from pipeline.inference.modes import detect_mode, plan_cases
from pipeline.inference.runner import run_predict

TAGS_2023 = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}
TAGS_LEGACY = {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2"}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    return {"flare": make_random_weights(root / "flare_demo"),
            "brats": make_random_weights(root / "brats_demo", task="brats", coarse_size=(16, 16, 16),
                                         fine_size=(16, 16, 16)),
            "root": root}


def brats_case(root: Path, cid: str, modalities=("flair", "t1", "t1ce", "t2"), legacy=False, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:20, :24, :22]
    brain = ((z - 10) / 9) ** 2 + ((y - 12) / 11) ** 2 + ((x - 11) / 10) ** 2 < 1
    for m in modalities:
        arr = np.where(brain, rng.normal(500, 50, brain.shape), 0).astype(np.int16)
        name = f"{cid}_{TAGS_LEGACY[m]}.nii.gz" if legacy else f"{cid}-{TAGS_2023[m]}.nii.gz"
        save_image(arr, root / cid / name, spacing=(1.0, 1.0, 1.0), origin=(0.0, -239.0, 0.0))
    return root / cid


def test_flare_naming(tmp_path, weights):
    inp = tmp_path / "inputs"
    save_image(ct_volume(), inp / "FLARE22_Ts_0001_0000.nii.gz")
    save_image(ct_volume(seed=2), inp / "FLARE22_Ts_0002_0000.nii.gz")
    (inp / "README.txt").write_text("not an image")
    assert detect_mode(inp) == "flare"
    result = run_predict(inp, tmp_path / "outputs", PredictSection(weights=weights["root"], device="cpu"))
    assert sorted(result.written) == ["FLARE22_Ts_0001", "FLARE22_Ts_0002"] and not result.failed
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["FLARE22_Ts_0001.nii.gz", "FLARE22_Ts_0002.nii.gz"]
    assert sorted(p.name for p in inp.iterdir()) == ["FLARE22_Ts_0001_0000.nii.gz", "FLARE22_Ts_0002_0000.nii.gz",
                                                     "README.txt"]  # input untouched


def test_flare_rejects_extra_channels_but_processes_the_rest(tmp_path, weights):
    inp = tmp_path / "in"
    save_image(ct_volume(), inp / "a_0000.nii.gz")
    save_image(ct_volume(), inp / "b_0001.nii.gz")
    result = run_predict(inp, tmp_path / "out", PredictSection(weights=weights["flare"], device="cpu", on_error="skip"))
    assert result.written == ["a"] and result.failed[0][0] == "b" and "channel 0001" in result.failed[0][1]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.nii.gz"]


def test_grand_challenge_naming(tmp_path, weights):
    inp = tmp_path / "input"
    uuid = "6f2b0d0e-3c4a-4b8e-9a55-0c1d2e3f4a5b"
    src = save_image(ct_volume(), inp / "images" / "ct" / f"{uuid}.mha", direction=np.diag([-1.0, -1.0, 1.0]))
    assert detect_mode(inp) == "grand-challenge"
    result = run_predict(inp, tmp_path / "output", PredictSection(weights=weights["root"], device="cpu"))
    out = tmp_path / "output" / "images" / "ct" / f"{uuid}.mha"
    assert result.written == [uuid] and out.is_file()
    pred = sitk.ReadImage(str(out))
    assert pred.GetSize() == src.GetSize() and pred.GetDirection() == src.GetDirection()
    assert pred.GetPixelID() == sitk.sitkUInt8
    # a configured output interface slug
    result = run_predict(inp, tmp_path / "output2", PredictSection(weights=weights["root"], device="cpu",
                         gc_output_slug="abdominal-organ-segmentation"))
    assert (tmp_path / "output2" / "images" / "abdominal-organ-segmentation" / f"{uuid}.mha").is_file()


@pytest.mark.parametrize("legacy", [False, True])
def test_brats_naming_any_subset_and_label_convention(tmp_path, weights, legacy):
    inp = tmp_path / "in"
    brats_case(inp, "BraTS-GLI-00001-000", legacy=legacy)
    brats_case(inp, "BraTS-GLI-00002-000", modalities=("t1ce", "t2", "flair"), legacy=legacy, seed=1)
    brats_case(inp, "BraTS-GLI-00003-000", modalities=("t1",), legacy=legacy, seed=2)
    assert detect_mode(inp) == "brats"
    convention = "legacy" if legacy else "2023"
    result = run_predict(inp, tmp_path / "out", PredictSection(weights=weights["root"], device="cpu",
                         label_convention=convention, postprocess={"default": {"mode": "none"}}))
    assert sorted(result.written) == ["BraTS-GLI-00001-000", "BraTS-GLI-00002-000", "BraTS-GLI-00003-000"]
    allowed = {0, 1, 2, 4} if legacy else {0, 1, 2, 3}
    seen: set[int] = set()
    for cid in result.written:
        pred = sitk.ReadImage(str(tmp_path / "out" / f"{cid}.nii.gz"))
        assert pred.GetSize() == (22, 24, 20) and pred.GetOrigin() == (0.0, -239.0, 0.0)
        seen |= set(np.unique(sitk.GetArrayViewFromImage(pred)).tolist())
    assert seen <= allowed


def test_brats_label_mapping_is_exact(tmp_path, weights, monkeypatch):
    """2023 ids 1,2,3 become legacy 1,2,4 (and nothing else changes)."""
    from pipeline.inference import engine

    inp = tmp_path / "in"
    brats_case(inp, "BraTS-GLI-00009-000")
    canned = np.zeros((20, 24, 22), np.uint8)
    canned[5:8, 5:8, 5:8], canned[9:12, 9:12, 9:12], canned[13:16, 13:16, 13:16] = 1, 2, 3

    def fake_upsample(self, logits, shape):
        return canned[: shape[0], : shape[1], : shape[2]].copy()

    monkeypatch.setattr(engine.Predictor, "upsample_argmax", fake_upsample)
    monkeypatch.setattr(engine.Predictor, "coarse", lambda self, *a: (np.zeros((16, 16, 16), np.uint8), (16, 16, 16)))
    opts = {"label_convention": "legacy", "postprocess": {"default": {"mode": "none"}}}
    run_predict(inp, tmp_path / "out", PredictSection(weights=weights["brats"], device="cpu", **opts))
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "BraTS-GLI-00009-000.nii.gz")))
    # the fine stage ran on the brain box (the coarse stage found nothing); compare counts
    assert {v: int((got == v).sum()) for v in (1, 2, 3, 4)} == {1: 27, 2: 27, 3: 0, 4: 27}


def test_mlcube_infer_entry(tmp_path, weights):
    from pipeline.commands.predict import infer_main

    data, out = tmp_path / "mlcube_io0", tmp_path / "mlcube_io2"
    brats_case(data, "BraTS-GLI-00005-000")
    params = tmp_path / "parameters.yaml"
    params.write_text(f"label_convention: legacy\ndevice: cpu\nweights: {weights['brats']}\n"
                      "predict:\n  postprocess:\n    default: {mode: none}\n")
    rc = infer_main([f"--data_path={data}", f"--output_path={out}", f"--parameters_file={params}",
                     "--model_weights=/mlcube_io1/weights"])
    assert rc == 0
    assert [p.name for p in out.iterdir()] == ["BraTS-GLI-00005-000.nii.gz"]
    values = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "BraTS-GLI-00005-000.nii.gz")))).tolist())
    assert 3 not in values


def test_cli_predict_default_weights_root(tmp_path, weights, monkeypatch):
    monkeypatch.setenv("SEGPIPE_WEIGHTS", str(weights["root"]))
    inp = tmp_path / "inputs"
    save_image(ct_volume(), inp / "c1_0000.nii.gz")
    assert main(["predict", "-i", str(inp), "-o", str(tmp_path / "o"), "--device", "cpu"]) == 0
    assert (tmp_path / "o" / "c1.nii.gz").is_file()


def test_undetectable_input_and_output_inside_input(tmp_path, weights):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SegpipeError, match="cannot tell the input layout"):
        plan_cases(tmp_path / "empty", tmp_path / "o")
    inp = tmp_path / "in"
    save_image(ct_volume(), inp / "a_0000.nii.gz")
    with pytest.raises(SegpipeError, match="inside the input folder"):
        run_predict(inp, inp / "out", PredictSection(weights=weights["flare"], device="cpu"))
