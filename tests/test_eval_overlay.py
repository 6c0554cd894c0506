"""The overlay figure (evaluation/overlay.py): the same picture whatever orientation the files are
stored in, the median case picked as documented, a fixed legend per task, slices through the
largest cross-section, small PNGs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.colors import to_hex
from PIL import Image

from evaluation.overlay import (
    BRATS_COLOURS,
    Overlay,
    find_case_image,
    largest_sections,
    legend,
    load_overlay,
    median_case,
    render,
    save_overlay,
)
from pipeline.image_io import Geometry, image_from_array, write_image
from pipeline.synth.orient import reorientation_to

SHAPE = (12, 30, 26)  # canonical (z, y, x)


def canonical_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CT-like image, ground truth and prediction, with the structures off-centre on every axis."""
    zz, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    image = (-1000 + 1040 * ((((yy - 15) / 13) ** 2 + ((xx - 13) / 11) ** 2) < 1) + 3 * xx - 2 * yy).astype(np.int16)
    gt = np.zeros(SHAPE, np.uint8)
    gt[(zz - 4) ** 2 / 9 + (yy - 10) ** 2 / 25 + (xx - 8) ** 2 / 16 < 1] = 1  # 'liver' at the patient's right
    gt[(zz - 7) ** 2 / 4 + (yy - 18) ** 2 / 9 + (xx - 18) ** 2 / 9 < 1] = 3
    pred = np.roll(gt, 1, axis=2)
    return image, gt, pred


@pytest.mark.parametrize("orientation", ["ras", "permuted", "oblique"])
def test_the_figure_does_not_depend_on_the_stored_orientation(tmp_path, orientation):
    canonical = Geometry(size=SHAPE[::-1], spacing=(0.8, 0.9, 2.5), origin=(10.0, -5.0, 40.0),
                         direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    pngs = []
    for name in ("lps", orientation):
        reo = reorientation_to(canonical, name, np.random.default_rng(3))
        assert (reo.original == canonical) == (name == "lps")  # the others are stored with another header
        folder = tmp_path / name
        paths = [write_image(image_from_array(reo.array_to_original(array), reo.original), folder / f"{role}.nii.gz")
                 for role, array in zip(("image", "gt", "pred"), canonical_case(), strict=True)]
        image, gt, pred = paths
        pngs.append(render("c", gt, pred, image, "flare").png)
    assert pngs[0] == pngs[1]


def test_largest_sections():
    mask = np.zeros((10, 20, 30), bool)
    mask[2:8, 5, 3:4] = True  # tall and thin: many axial slices, one voxel each
    mask[6, 10:18, 5:25] = True  # axial slice 6 holds 160 voxels
    z, y = largest_sections(mask)
    assert z == 6 and y == int(np.argmax(mask.sum(axis=(0, 2))))
    assert largest_sections(np.zeros((4, 6, 8), bool)) == (2, 3)  # empty: the centre


def results_of(means: dict[str, float], failed: tuple[str, ...] = ()) -> dict:
    cases = [{"case": c, "status": "ok", "labels": {"a": {"dsc": m - 0.1}, "b": {"dsc": m + 0.1}}} for c, m in means.items()]
    cases += [{"case": c, "status": "failed", "labels": {"a": {"dsc": 0.0}}} for c in failed]
    return {"task": "flare", "metrics": ["dsc", "nsd"], "cases": cases}


def test_median_case_by_mean_primary_metric():
    picked = median_case(results_of({"c1": 0.9, "c2": 0.2, "c3": 0.5, "c4": 0.7, "c5": 0.4}, failed=("c0",)))
    assert (picked[0]["case"], picked[1], picked[2]) == ("c3", 3, 5) and picked[3] == pytest.approx(0.5)
    even = median_case(results_of({"c1": 0.9, "c2": 0.2, "c3": 0.5, "c4": 0.7}))
    assert even[0]["case"] == "c3" and even[1:3] == (2, 4)  # the lower median
    tie = median_case(results_of({"b": 0.5, "a": 0.5, "c": 0.5}))
    assert tie[0]["case"] == "b"  # ties by case id: a, b, c
    assert median_case(results_of({}, failed=("x",))) is None


def test_legend_is_fixed_per_task():
    flare = legend("flare")
    assert list(flare) == list(range(1, 14)) and flare[1][0] == "liver" and flare[13][0] == "left kidney"
    assert len({colour for _, colour in flare.values()}) == 13
    assert legend("flare") == flare
    # one colour per meaning, whatever value the convention gives it
    new, old, post = legend("brats-2023"), legend("brats-legacy"), legend("brats-2025")
    assert new[3][1] == old[4][1] == post[3][1] == BRATS_COLOURS["enhancing"]
    assert new[1][1] == old[1][1] == BRATS_COLOURS["necrotic"] and new[2][1] == old[2][1] == BRATS_COLOURS["edema"]
    assert post[4] == ("RC resection cavity", BRATS_COLOURS["cavity"]) and 4 not in new


def test_labels_are_drawn_in_their_legend_colour(tmp_path):
    """The liver's pixels in the ground-truth panel are its legend red, blended over black (no image)."""
    gt = canonical_case()[1]
    geo = Geometry(size=SHAPE[::-1], spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                   direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    gt_only = np.where(gt == 1, 1, 0).astype(np.uint8)
    paths = [write_image(image_from_array(a, geo), tmp_path / f"{n}.nii.gz")
             for n, a in (("gt", gt_only), ("pred", np.zeros_like(gt)))]
    png = render("c", paths[0], paths[1], None, "flare").png
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    red = np.array([int(legend("flare")[1][1][i:i + 2], 16) for i in (1, 3, 5)])
    blended = np.round(0.55 * red).astype(int)  # over the black background (no image given)
    assert np.any(np.all(np.abs(pixels.astype(int) - blended) <= 2, axis=1))
    assert to_hex(red / 255) == legend("flare")[1][1]


def test_png_is_small_and_the_index_round_trips(tmp_path):
    from pipeline.synth import write_flare_dataset

    data = tmp_path / "synth"
    write_flare_dataset(data, cases=1, seed=2)
    gt = data / "labels" / "FLARE22_Tr_0001.nii.gz"
    overlay = render("FLARE22_Tr_0001", gt, gt, data / "images" / "FLARE22_Tr_0001_0000.nii.gz", "flare",
                     caption="median case")
    assert overlay.png.startswith(b"\x89PNG") and len(overlay.png) < 150_000
    assert Image.open(io.BytesIO(overlay.png)).size[0] == 400
    save_overlay(overlay, tmp_path / "report", "overlay_median_FLARE22_Tr_0001.png")
    assert load_overlay(tmp_path / "report") == overlay
    assert load_overlay(tmp_path / "nothing") is None
    (tmp_path / "report" / "overlay.json").write_text('{"png": "../elsewhere.png", "case": "x", "caption": ""}')
    assert load_overlay(tmp_path / "report") is None
    assert isinstance(overlay, Overlay) and "<figcaption>flare: median case</figcaption>" in overlay.html("flare: ")


def test_find_case_image(tmp_path):
    def touch(rel: str) -> None:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")

    touch("FLARE22_Val_0001_0000.nii.gz")
    touch("B-001/B-001-t2f.nii.gz")
    touch("B-001/B-001-t1c.nii.gz")
    touch("B-002/B-002_flair.nii.gz")
    assert find_case_image(tmp_path, "FLARE22_Val_0001") == tmp_path / "FLARE22_Val_0001_0000.nii.gz"
    assert find_case_image(tmp_path, "B-001") == tmp_path / "B-001" / "B-001-t1c.nii.gz"
    assert find_case_image(tmp_path, "B-002") == tmp_path / "B-002" / "B-002_flair.nii.gz"
    assert find_case_image(tmp_path, "missing") is None and find_case_image(None, "B-001") is None
    assert find_case_image(tmp_path, "../B-001") is None
