"""Synthetic challenge data: anatomy, intensities, determinism, layouts, orientations, missing
modalities, label conventions, atlas selection and the output-folder policy."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.cli import main
from pipeline.errors import SegpipeError
from pipeline.image_io import read_image, to_canonical
from pipeline.synth import atlas as atlas_mod
from pipeline.synth import (
    draw_present,
    make_brats_case,
    make_flare_case,
    parse_missing_rates,
    write_brats_dataset,
    write_flare_dataset,
)
from pipeline.synth.ct_body import plan_body
from pipeline.synth.flare import PLAUSIBLE_VOLUME_MM3, SIZES, _scan_geometry
from pipeline.synth.noise import case_seed, rng_for
from pipeline.tasks import BRATS_MODALITIES, FLARE22_LABELS


def centroid_mm(label: np.ndarray, value: int, case) -> np.ndarray:
    """Physical (x, y, z) centroid of a canonical label (identity direction)."""
    zyx = np.argwhere(label == value).mean(axis=0)
    return np.asarray(case.geometry.origin) + zyx[::-1] * np.asarray(case.geometry.spacing)


@pytest.fixture(scope="module")
def flare_cases():
    return [make_flare_case(seed, "small") for seed in (0, 1, 2)]


# -- FLARE in memory -----------------------------------------------------------------------
def test_flare_organs_present_plausible_and_anatomical(flare_cases):
    for case in flare_cases:
        assert case.image.dtype == np.int16 and case.label.dtype == np.uint8
        assert case.image.shape == case.label.shape
        nz, ny, nx = case.label.shape
        assert (ny, nx) == (128, 128) and 48 <= nz <= 64
        assert set(np.unique(case.label)) == set(range(14))
        volumes = case.organ_volumes_mm3()
        for i, name in FLARE22_LABELS.items():
            lo, hi = PLAUSIBLE_VOLUME_MM3[i]
            assert lo <= volumes[name] <= hi, (case.info["seed"], name, volumes[name])
        c = {i: centroid_mm(case.label, i, case) for i in FLARE22_LABELS}
        # LPS: +x is the patient's left, +y posterior, +z superior
        assert c[1][0] < c[3][0]  # liver right of spleen
        assert c[2][0] < 0 < c[13][0] or c[2][0] < c[13][0]  # right kidney on the right
        assert c[7][0] < c[8][0]  # adrenals
        assert c[6][0] < c[5][0]  # IVC right of aorta
        assert c[9][2] < c[1][2]  # gallbladder below the liver's centre
        assert c[7][2] > c[2][2] and c[8][2] > c[13][2]  # adrenals above the kidneys
        assert c[2][1] > c[4][1] and c[13][1] > c[4][1]  # kidneys posterior to the pancreas
        assert c[10][2] > c[12][2]  # esophagus above the duodenum
        # small structures stay several voxels across at 3×3×5 mm
        for i in (7, 8, 9, 10):
            assert np.count_nonzero(case.label == i) >= 25, FLARE22_LABELS[i]


def test_flare_hu_ranges(flare_cases):
    for case in flare_cases:
        img, lab = case.image, case.label
        assert img.min() >= -1024 and img.max() <= 3071
        liver, spleen, kidney = (float(np.median(img[lab == i])) for i in (1, 3, 2))
        aorta, gallbladder = float(np.median(img[lab == 5])), float(np.median(img[lab == 9]))
        assert 40 < liver < 180 and 40 < spleen < 180 and 80 < kidney < 300
        assert aorta > liver + 30 and gallbladder < liver - 20
        assert img.max() > 400  # bone
        body_background = img[(lab == 0) & (img > -200) & (img < 0)]
        assert body_background.size > 0  # fat exists
        assert np.percentile(img, 1) <= -900  # air / outside
        # overlapping but not identical organ intensities
        assert abs(liver - spleen) < 80


def test_flare_determinism():
    a, b = make_flare_case(7, "small"), make_flare_case(7, "small")
    assert a.image.tobytes() == b.image.tobytes() and a.label.tobytes() == b.label.tobytes()
    assert a.geometry == b.geometry
    c = make_flare_case(8, "small")
    assert c.image.shape != a.image.shape or not np.array_equal(c.image, a.image)


def test_full_size_scan_geometry_ranges():
    spec = SIZES["full"]
    for seed in range(40):
        grid, _world = _scan_geometry(spec, plan_body(rng_for(seed, 1)), rng_for(seed, 2))
        nz, ny, nx = grid.shape
        assert (ny, nx) == (512, 512) and 80 <= nz <= 200
        assert 0.6 <= grid.spacing[0] <= 0.9 and grid.spacing[0] == grid.spacing[1] and 2.0 <= grid.spacing[2] <= 5.0


# -- FLARE on disk -------------------------------------------------------------------------
def test_flare_layout_manifest_and_roundtrip(tmp_path):
    out = tmp_path / "flare"
    manifest = write_flare_dataset(out, cases=2, unlabeled=1, validation=1, seed=3)
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert names == [
        "images/FLARE22_Tr_0001_0000.nii.gz", "images/FLARE22_Tr_0002_0000.nii.gz",
        "labels/FLARE22_Tr_0001.nii.gz", "labels/FLARE22_Tr_0002.nii.gz",
        "synth.json", "unlabeled/FLARE22_Unl_0001_0000.nii.gz",
        "validation/FLARE22_Val_0001_0000.nii.gz", "validation_labels/FLARE22_Val_0001.nii.gz",
    ]
    on_disk = json.loads((out / "synth.json").read_text())
    assert on_disk["complete"] is True and on_disk == json.loads(json.dumps(manifest))
    assert {c["role"] for c in manifest["cases"]} == {"train", "validation", "unlabeled"}
    image = read_image(out / "images/FLARE22_Tr_0001_0000.nii.gz")
    label = read_image(out / "labels/FLARE22_Tr_0001.nii.gz")
    assert image.GetPixelID() == sitk.sitkInt16 and label.GetPixelID() == sitk.sitkUInt8
    for key in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(image, key)() == getattr(label, key)()
    expected = make_flare_case(case_seed(3, "train", 1), "small")
    assert np.array_equal(sitk.GetArrayFromImage(label), expected.label)
    assert np.array_equal(sitk.GetArrayFromImage(image), expected.image)
    entry = manifest["cases"][0]
    assert entry["organ_volumes_mm3"]["liver"] == pytest.approx(expected.organ_volumes_mm3()["liver"], rel=1e-6)


@pytest.mark.parametrize("orientation", ["ras", "permuted", "oblique"])
def test_orientations_recover_the_canonical_array(tmp_path, orientation):
    ref_dir, dir_ = tmp_path / "lps", tmp_path / orientation
    write_flare_dataset(ref_dir, cases=1, seed=11, orientation="lps")
    write_flare_dataset(dir_, cases=1, seed=11, orientation=orientation)
    for rel in ("images/FLARE22_Tr_0001_0000.nii.gz", "labels/FLARE22_Tr_0001.nii.gz"):
        # keep both images alive: to_canonical may return a view of the image's buffer
        ref_img, img = read_image(ref_dir / rel), read_image(dir_ / rel)
        ref, ref_reo = to_canonical(ref_img)
        arr, reo = to_canonical(img)
        assert np.array_equal(arr, ref)
        d = np.asarray(img.GetDirection()).reshape(3, 3)
        if orientation == "ras":
            assert np.allclose(d, np.diag([-1.0, -1.0, 1.0]))
        elif orientation == "permuted":
            assert reo.perm != (0, 1, 2) and np.allclose(np.abs(d).sum(axis=0), 1)
        else:
            angle = np.degrees(np.arccos((np.trace(d) - 1) / 2))
            assert 10 - 1e-6 <= angle <= 25 + 1e-6
        if orientation != "oblique":  # same physical grid, only stored differently
            assert not reo.canonical.differences(ref_reo.canonical, tol=1e-6)
        else:  # rotated about the grid centre
            centre = lambda g: np.asarray(g.origin) + g.direction_matrix @ ((np.asarray(g.size) - 1) * np.asarray(g.spacing) / 2)  # noqa: E731
            assert np.allclose(centre(reo.canonical), centre(ref_reo.canonical), atol=1e-4)


def test_output_folder_policy(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(SegpipeError, match="not empty"):
        write_flare_dataset(foreign, cases=1)
    write_flare_dataset(foreign, cases=1, force=True)
    assert (foreign / "notes.txt").read_text() == "keep me"
    again = tmp_path / "again"
    write_flare_dataset(again, cases=2)
    write_flare_dataset(again, cases=1)  # a previous synth output may be regenerated; stale files go
    assert not (again / "images/FLARE22_Tr_0002_0000.nii.gz").exists()
    assert (again / "images/FLARE22_Tr_0001_0000.nii.gz").exists()
    assert json.loads((again / "synth.json").read_text())["options"]["cases"] == 1
    with pytest.raises(SegpipeError, match="nothing to write"):
        write_flare_dataset(tmp_path / "empty", cases=0)
    with pytest.raises(SegpipeError, match="orientation"):
        write_flare_dataset(tmp_path / "x", cases=1, orientation="sideways")


# -- BraTS ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def brats_case():
    return make_brats_case(0, "small")


def test_brats_case_contrasts_and_labels(brats_case):
    case = brats_case
    assert set(case.images) == set(BRATS_MODALITIES)
    assert case.label.shape == (62, 96, 96) and case.label.dtype == np.uint8
    assert set(np.unique(case.label)) == {0, 1, 2, 3}
    brain = case.images["t1"] > 0
    assert brain.mean() > 0.1 and np.all(brain[case.label > 0])
    for image in case.images.values():
        assert image.dtype == np.int16 and image.min() == 0 and image.shape == case.label.shape
        assert np.array_equal(image > 0, brain) or (image[~brain] == 0).all()
    healthy = brain & (case.label == 0)
    mean = {m: {k: float(case.images[m][case.label == k].mean()) for k in (1, 2, 3)} | {"brain": float(case.images[m][healthy].mean())}
            for m in BRATS_MODALITIES}
    assert mean["t1ce"][3] > 1.3 * mean["t1"][3]  # enhancing rim enhances
    assert mean["flair"][2] > 1.3 * mean["flair"]["brain"]  # edema is FLAIR-bright
    assert mean["t2"][1] > mean["t2"]["brain"]  # necrosis is T2-bright
    assert mean["t1ce"][1] < mean["t1ce"][3]  # necrotic core is dark inside the rim
    # nesting: the necrotic core is enclosed by tumour, not touching healthy brain directly
    core = np.argwhere(case.label == 1).mean(axis=0)
    assert case.label[tuple(np.round(core).astype(int))] in (1, 3)
    assert case.label_in("legacy").max() == 4 and set(np.unique(case.label_in("legacy"))) == {0, 1, 2, 4}


def test_brats_determinism_and_variation(brats_case):
    again = make_brats_case(0, "small")
    assert all(again.images[m].tobytes() == brats_case.images[m].tobytes() for m in BRATS_MODALITIES)
    assert again.label.tobytes() == brats_case.label.tobytes()
    other = make_brats_case(1, "small")
    assert not np.array_equal(other.images["t1"], brats_case.images["t1"])
    assert not np.array_equal(other.label, brats_case.label)


def test_atlas_selection(monkeypatch):
    if atlas_mod.nilearn_data_dir() is not None:
        assert atlas_mod.resolve_atlas("auto") == "mni"
        assert make_brats_case(2, "small").info["atlas"].startswith("mni152")
    assert "nilearn" not in sys.modules  # located, never imported
    monkeypatch.setattr(atlas_mod, "nilearn_data_dir", lambda: None)
    assert atlas_mod.resolve_atlas("auto") == "procedural"
    with pytest.raises(ValueError, match="nilearn"):
        atlas_mod.resolve_atlas("mni")
    monkeypatch.setenv(atlas_mod.ATLAS_ENV, "procedural")
    case = make_brats_case(2, "small", atlas="auto")
    assert case.info["atlas"] == "procedural"
    assert set(np.unique(case.label)) == {0, 1, 2, 3}
    assert (case.images["flair"] > 0).mean() > 0.1


@pytest.mark.parametrize(("layout", "convention", "values"), [("2023", None, {0, 1, 2, 3}), ("legacy", None, {0, 1, 2, 4}),
                                                             ("legacy", "2023", {0, 1, 2, 3})])
def test_brats_layouts_and_conventions(tmp_path, layout, convention, values):
    manifest = write_brats_dataset(tmp_path, cases=2, layout=layout, convention=convention, seed=5)
    if layout == "2023":
        ids = ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
        suffixes = ["-seg", "-t1c", "-t1n", "-t2f", "-t2w"]
    else:
        ids = ["BraTS20_Training_001", "BraTS20_Training_002"]
        suffixes = ["_flair", "_seg", "_t1", "_t1ce", "_t2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [*ids, "synth.json"]
    for cid in ids:
        assert sorted(p.name for p in (tmp_path / cid).iterdir()) == sorted(f"{cid}{s}.nii.gz" for s in suffixes)
    seg = sitk.GetArrayFromImage(read_image(tmp_path / manifest["cases"][0]["files"]["seg"]))
    assert set(np.unique(seg)) == values


def test_missing_rates_statistics_and_never_empty():
    rates = {"flair": 0.6, "t1": 0.2, "t1ce": 0.4, "t2": 0.8}
    rng = np.random.default_rng(0)
    draws = [draw_present(rng, rates) for _ in range(4000)]
    assert all(len(d) >= 1 for d in draws)
    for m, r in rates.items():
        missing = np.mean([m not in d for d in draws])
        assert abs(missing - r) < 0.04, (m, missing, r)
    order = sorted(rates, key=lambda m: np.mean([m not in d for d in draws]))
    assert order == ["t1", "t1ce", "flair", "t2"]  # imbalance preserved
    extreme = {m: 0.99 for m in BRATS_MODALITIES}
    assert all(len(draw_present(rng, extreme)) >= 1 for _ in range(500))


def test_missing_files_on_disk(tmp_path):
    manifest = write_brats_dataset(tmp_path, cases=6, missing_rates="flair=0.6,t1=0.2,t1ce=0.4,t2=0.8", seed=1)
    assert any(c["missing"] for c in manifest["cases"])
    for case in manifest["cases"]:
        folder = tmp_path / case["id"]
        written = {p.name for p in folder.iterdir()}
        assert f"{case['id']}-seg.nii.gz" in written and len(case["present"]) >= 1
        assert len(written) == len(case["present"]) + 1
        for m in case["missing"]:
            assert m not in case["files"]


@pytest.mark.parametrize("spec", ["flair=1.0", "t1=-0.1", "foo=0.2", "flair", "flair=abc", "flair=0.1,t2f=0.2"])
def test_missing_rates_bad_input(spec):
    with pytest.raises(SegpipeError, match="--missing-rates"):
        parse_missing_rates(spec)


def test_missing_rates_accepts_2023_tags():
    assert parse_missing_rates("t2f=0.5, t1n=0.1") == {"flair": 0.5, "t1": 0.1, "t1ce": 0.0, "t2": 0.0}


def test_cli(tmp_path, capsys):
    assert main(["synth", "flare", str(tmp_path / "f"), "--cases", "1", "--unlabeled", "1"]) == 0
    assert (tmp_path / "f/unlabeled/FLARE22_Unl_0001_0000.nii.gz").is_file()
    assert main(["synth", "flare", str(tmp_path / "g"), "--cases", "1", "--layout", "legacy"]) == 2
    assert "--layout: only for synth brats" in capsys.readouterr().err
    assert main(["synth", "brats", str(tmp_path / "b"), "--cases", "1", "--missing-rates", "t1=2"]) == 2
    assert "outside [0, 1)" in capsys.readouterr().err
