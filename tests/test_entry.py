"""`segpipe entry`, the image's default command: a container started with no command, the way
grand-challenge and the BraTS 2025 orchestrator start it (issue #15). The real-engine runs of
the same thing are in tests/test_container.py and .ci/run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from predict_fixtures import ct_volume, make_random_weights, save_image
from test_predict_modes import brats_case

from pipeline.cli import main

UUID = "0b8e6c1a-7d2f-4e3b-9c5a-1f2e3d4c5b6a"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    model = tmp_path_factory.mktemp("opt-ml-model")  # an uploaded model tarball, extracted
    return {"flare": make_random_weights(root / "flare_demo"),
            "brats": make_random_weights(root / "brats_demo", task="brats", coarse_size=(16, 16, 16),
                                         fine_size=(16, 16, 16)),
            "root": root, "model": make_random_weights(model, seed=3)}


def _gc_manifest(slugs: list[str]) -> list[dict]:
    """inputs.json as the platform writes it (image sockets plus a value socket)."""
    items = [{"pk": i, "file": None, "image": {"pk": f"img-{i}", "name": f"{UUID}.mha"}, "value": None,
              "socket": {"slug": s, "kind": "Image", "super_kind": "Image", "relative_path": f"images/{s}"}}
             for i, s in enumerate(slugs)]
    items.append({"pk": 99, "file": None, "image": None, "value": 0.5,
                  "socket": {"slug": "threshold", "kind": "Float", "super_kind": "Value",
                             "relative_path": "threshold.json"}})
    return items


def test_without_mounts_it_prints_the_help(tmp_path, capsys):
    assert main(["entry", "--input", str(tmp_path / "no-input"), "--output", str(tmp_path / "no-output")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: segpipe") and "predict" in out and "entry" in out


def test_grand_challenge_job(tmp_path, weights, monkeypatch, capsys):
    inp, out = tmp_path / "input", tmp_path / "output"
    out.mkdir()
    src = save_image(ct_volume(), inp / "images" / "ct-image" / f"{UUID}.mha", direction=np.diag([-1.0, -1.0, 1.0]))
    # a socket the manifest does not list is not this job's input
    save_image(ct_volume(seed=1), inp / "images" / "other-image" / "ffff.mha")
    (inp / "inputs.json").write_text(json.dumps(_gc_manifest(["ct-image"])))
    monkeypatch.setenv("SEGPIPE_GC_OUTPUT_SLUG", "abdominal-organ-segmentation")
    monkeypatch.setenv("SEGPIPE_WEIGHTS", str(weights["root"]))
    assert main(["entry", "--input", str(inp), "--output", str(out), "--model-dir", str(weights["model"]),
                 "--device", "cpu"]) == 0
    assert f"(weights {weights['model']})" in capsys.readouterr().err
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == [f"images/abdominal-organ-segmentation/{UUID}.mha"]
    pred = sitk.ReadImage(str(out / written[0]))
    assert pred.GetPixelID() == sitk.sitkUInt8
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(pred, get)() == getattr(src, get)(), get


def test_grand_challenge_manifest_naming_a_missing_socket_is_an_error(tmp_path, weights, monkeypatch, caplog):
    inp, out = tmp_path / "input", tmp_path / "output"
    out.mkdir()
    save_image(ct_volume(), inp / "images" / "ct-image" / f"{UUID}.mha")
    (inp / "inputs.json").write_text(json.dumps(_gc_manifest(["ct-image", "pet-image"])))
    monkeypatch.setenv("SEGPIPE_WEIGHTS", str(weights["root"]))
    assert main(["entry", "--input", str(inp), "--output", str(out), "--model-dir", str(tmp_path / "none"),
                 "--device", "cpu"]) == 1  # a failed job on grand-challenge
    assert "image socket 'pet-image'" in caplog.text
    assert (out / "images" / "ct-image" / f"{UUID}.mha").is_file()  # the good input is still predicted


def test_brats_2025_job_with_a_missing_sequence(tmp_path, weights, monkeypatch, capsys):
    inp, out = tmp_path / "input", tmp_path / "output"
    out.mkdir()
    brats_case(inp, "BraTS-GLI-00012-100", modalities=("flair", "t1ce", "t2"))
    monkeypatch.setenv("SEGPIPE_WEIGHTS", str(weights["root"]))
    # a model dir without weights for the task falls back to the baked-in weights
    assert main(["entry", "--input", str(inp), "--output", str(out), "--model-dir", str(weights["model"]),
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "holds no usable weights" in err and "brats layout" in err
    assert sorted(p.name for p in out.iterdir()) == ["BraTS-GLI-00012-100.nii.gz"]
    pred = sitk.ReadImage(str(out / "BraTS-GLI-00012-100.nii.gz"))
    ref = sitk.ReadImage(str(inp / "BraTS-GLI-00012-100" / "BraTS-GLI-00012-100-t1c.nii.gz"))
    assert pred.GetSize() == ref.GetSize() and pred.GetOrigin() == ref.GetOrigin()
    assert set(np.unique(sitk.GetArrayViewFromImage(pred)).tolist()) <= {0, 1, 2, 3}


def test_unknown_input_layout_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "input").mkdir()
    (tmp_path / "output").mkdir()
    (tmp_path / "input" / "notes.txt").write_text("hi\n")
    assert main(["entry", "--input", str(tmp_path / "input"), "--output", str(tmp_path / "output")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segpipe entry: error:") and "cannot tell the input layout" in err[0]
