"""Honest labels (issue #14): segpipe synth marks its images, prepare records what it prepared
from, and the weights' manifest says whether they were trained on synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import pytest
from predict_fixtures import ct_volume, save_image

from pipeline.image_io import read_image, write_image
from pipeline.inference.synthetic import write_brats_case
from pipeline.provenance import (
    SyntheticInputCheck,
    is_synthetic_image,
    synthetic_kind,
    synthetic_training,
    training_data_record,
)
from pipeline.synth import write_flare_dataset

REPO = Path(__file__).resolve().parent.parent


def plain_ct(path: Path) -> Path:
    """A CT-like image written the way any other tool would: no synth marker."""
    save_image(ct_volume(), path)
    return path


@pytest.fixture(scope="module")
def synth_flare(tmp_path_factory):
    out = tmp_path_factory.mktemp("prov") / "synth_flare"
    write_flare_dataset(out, cases=1, validation=1, seed=7, size="small", orientation="ras")
    return out


def test_synth_images_carry_the_marker_in_the_nifti_descrip(synth_flare):
    files = sorted(synth_flare.rglob("*.nii.gz"))
    assert len(files) == 4  # image + label, train and validation
    for path in files:
        # read by nibabel, not ITK: the marker is in the NIfTI header field itself
        assert nib.load(str(path)).header["descrip"].tobytes().rstrip(b"\0") == b"segpipe synth flare"
        assert is_synthetic_image(path) is True and synthetic_kind(path) == "flare"


def test_other_synth_writers_mark_their_images_too(tmp_path):
    write_brats_case(tmp_path / "BraTS-GLI-00001-000", 1, modalities=("t1ce",), atlas="procedural")
    files = sorted((tmp_path / "BraTS-GLI-00001-000").iterdir())
    assert [p.name for p in files] == ["BraTS-GLI-00001-000-seg.nii.gz", "BraTS-GLI-00001-000-t1c.nii.gz"]
    assert {synthetic_kind(p) for p in files} == {"brats"}


def test_unmarked_and_unreadable_images(tmp_path):
    real = plain_ct(tmp_path / "scan_0000.nii.gz")
    assert is_synthetic_image(real) is False and synthetic_kind(real) is None
    broken = tmp_path / "broken_0000.nii.gz"
    broken.write_bytes(b"not an image")
    assert is_synthetic_image(broken) is None  # no verdict: the case fails on its own


def test_marker_survives_conversion_to_mha_and_nrrd(synth_flare, tmp_path):
    src = synth_flare / "images" / "FLARE22_Tr_0001_0000.nii.gz"
    for suffix in (".mha", ".nrrd"):
        dest = tmp_path / f"ct{suffix}"
        write_image(read_image(src), dest)
        assert synthetic_kind(dest) == "flare"
    plain = tmp_path / "plain.mha"
    write_image(read_image(plain_ct(tmp_path / "plain.nii.gz")), plain)
    assert is_synthetic_image(plain) is False


def test_training_data_of_a_synth_folder_is_its_manifest(synth_flare):
    synth = json.loads((synth_flare / "synth.json").read_text())
    assert training_data_record(synth_flare) == {
        "synthetic": True, "generator": "segpipe synth", "kind": "flare", "seed": 7, "size": "small",
        "orientation": "ras", "cases": len(synth["cases"]),
    }
    assert len(synth["cases"]) == 2


def test_training_data_of_other_folders(tmp_path, synth_flare):
    real = tmp_path / "FLARE22_real"
    plain_ct(real / "images" / "a_0000.nii.gz")
    assert training_data_record(real, [real / "images" / "a_0000.nii.gz"]) == {"synthetic": False,
                                                                                "source": "FLARE22_real"}
    # marked images without their synth.json (a copied subset): synthetic, what the marker tells
    images = sorted((synth_flare / "images").glob("*.nii.gz")) + sorted((synth_flare / "validation").glob("*"))
    assert training_data_record(tmp_path / "copied", images) == {
        "synthetic": True, "generator": "segpipe synth", "kind": "flare", "seed": None, "size": None,
        "orientation": None, "cases": 2}
    # one unmarked case among marked ones: not a synthetic data set
    assert training_data_record(real, [*images, real / "images" / "a_0000.nii.gz"])["synthetic"] is False
    # a synth.json that is not segpipe's, unreadable, or from an interrupted run
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "synth.json").write_text(json.dumps({"generator": "someone else"}))
    assert training_data_record(odd) is None
    (odd / "synth.json").write_text("{not json")
    assert training_data_record(odd) is None
    (odd / "synth.json").write_text(json.dumps({"generator": "segpipe synth", "kind": "brats", "complete": False,
                                                "options": {"seed": 3, "size": "full"}, "cases": []}))
    assert training_data_record(odd)["cases"] is None and training_data_record(odd)["seed"] == 3


def test_synthetic_training_from_the_record_or_the_old_trained_on_text():
    record = {"synthetic": True, "generator": "segpipe synth", "kind": "flare", "seed": 0, "size": "small", "cases": 14}
    assert synthetic_training({"training_data": record}) == "segpipe synth flare, seed 0, size small, 14 cases"
    flare = json.loads((REPO / "model_weights" / "flare_demo" / "manifest.json").read_text())
    assert synthetic_training(flare) == "segpipe synth flare, seed 1, size small, 18 cases"
    brats = json.loads((REPO / "model_weights" / "brats_demo" / "manifest.json").read_text())
    assert synthetic_training(brats).startswith("segpipe synth brats")
    older = {k: v for k, v in brats.items() if k != "training_data"}  # older manifests: only the free text
    assert synthetic_training(older) == brats["trained_on"]
    assert synthetic_training({"training_data": {"synthetic": False, "source": "FLARE22"}}) is None
    assert synthetic_training({"training_data": None}) is None and synthetic_training({}) is None


def test_input_check_warns_once_and_only_for_unmarked_images(tmp_path, synth_flare):
    real = plain_ct(tmp_path / "a_0000.nii.gz")
    marked = synth_flare / "validation" / "FLARE22_Val_0001_0000.nii.gz"
    check = SyntheticInputCheck("model_weights/flare_demo", {"trained_on": "24 synthetic flare cases"})
    assert check.warning("FLARE22_Val_0001", marked) is None
    line = check.warning("a", real)
    assert line.startswith("weights model_weights/flare_demo were trained on synthetic data (24 synthetic flare cases)")
    assert "for real scans train on real data" in line and "\n" not in line
    assert check.warning("b", real) is None  # once per run
    for manifest in ({}, {"training_data": {"synthetic": False, "source": "FLARE22"}}):  # no synthetic claim
        assert SyntheticInputCheck("w", manifest).warning("a", real) is None
