"""pipeline.preprocess: the functions prepare and predict share, against torch as the reference
for resampling and against hand computations for intensity and boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_prepare.process import fine_grid
from pipeline import preprocess as pp
from pipeline.config import PrepareSection


@pytest.mark.parametrize("out_shape", [(7, 30, 12), (40, 16, 41), (23, 37, 41), (3, 3, 3)])
def test_resample_linear_equals_torch_trilinear(out_shape):
    a = np.random.default_rng(0).normal(size=(2, 23, 37, 41)).astype(np.float32)
    ours = pp.resample_linear(a, out_shape)
    ref = F.interpolate(torch.from_numpy(a)[None], size=out_shape, mode="trilinear", align_corners=False)[0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert ours.dtype == np.float32


@pytest.mark.parametrize("out_shape", [(7, 30, 12), (46, 74, 82)])
def test_resample_nearest_equals_torch_nearest_exact(out_shape):
    a = np.random.default_rng(1).integers(0, 14, size=(23, 37, 41)).astype(np.uint8)
    ours = pp.resample_nearest(a, out_shape)
    ref = F.interpolate(torch.from_numpy(a)[None, None], size=out_shape, mode="nearest-exact")[0, 0].numpy()
    assert np.array_equal(ours, ref)


def test_region_resampling_equals_resizing_the_crop():
    a = np.random.default_rng(2).normal(size=(20, 30, 40)).astype(np.float32)
    box = ((3, 17), (5, 29), (0, 40))
    crop = a[3:17, 5:29, 0:40]
    np.testing.assert_allclose(pp.resample_linear(a, (9, 11, 13), box), pp.resample_linear(crop, (9, 11, 13)), atol=1e-6)


def test_label_resampling_never_invents_labels():
    rng = np.random.default_rng(3)
    labels = np.zeros((30, 40, 40), np.uint8)
    for value in (1, 2, 5, 13):
        z, y, x = rng.integers(5, 25, 3)
        labels[z - 4:z + 4, y - 3:y + 5, x - 5:x + 2] = value
    for method in ("nearest", "linear"):
        same = pp.resample_labels(labels, labels.shape, method=method)
        assert np.array_equal(same, labels), method  # the identity grid is exact
        for shape in ((12, 17, 19), (45, 60, 61)):
            out = pp.resample_labels(labels, shape, method=method)
            assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1, 2, 5, 13}


def test_linear_label_vote_is_the_partial_volume_majority():
    # a 2x downsample of a 2x2x2-aligned pattern: each output voxel sees exactly 8 inputs
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[:2, :2, :2] = 3  # block fully label 3
    labels[2:, :2, :2][:1] = 4  # half of a block: tie with background → background
    labels[:2, 2:, :2] = 1
    labels[:2, 2:, :2][0, 0, 0] = 0  # 7/8 label 1
    out = pp.resample_labels(labels, (2, 2, 2), method="linear")
    assert out[0, 0, 0] == 3 and out[0, 1, 0] == 1 and out[1, 0, 0] == 0


def test_expand_box_mm_is_anisotropic_and_clamped():
    box = ((10, 20), (30, 40), (5, 9))
    out = pp.expand_box_mm(box, 20.0, spacing=(2.5, 0.8, 4.0), shape=(100, 60, 200))
    assert out == ((2, 28), (5, 60), (0, 14))  # 8, 25 and 5 voxels, clamped at 0 and 60


def test_ct_normalisation_and_body_mask():
    rng = np.random.default_rng(4)
    image = np.full((10, 40, 40), -1000, np.int16)
    image[:, 5:30, 8:36] = rng.normal(50, 200, (10, 25, 28)).clip(-400, 2000).astype(np.int16)  # body
    image[:, 35:38, 2:38] = 300  # a separate table
    mask = pp.ct_body_mask(image, stride=1)
    assert pp.bounding_box(mask) == ((0, 10), (5, 30), (8, 36))  # the table is not the body
    mean, std = pp.ct_statistics(image, (-325, 325), mask)
    clipped = np.clip(image[mask].astype(np.float64), -325, 325)
    assert mean == pytest.approx(clipped.mean(), rel=1e-6) and std == pytest.approx(clipped.std(), rel=1e-5)
    out = pp.normalize_ct(image, (-325, 325), mean, std)
    assert out.dtype == np.float32
    assert out[mask].mean() == pytest.approx(0.0, abs=1e-4) and out[mask].std() == pytest.approx(1.0, abs=1e-4)
    assert out.max() == pytest.approx((325 - mean) / std, rel=1e-5)


def test_mri_normalisation_of_a_channel_ignores_the_other_modalities():
    """Each modality is z-scored in its own foreground: removing another modality (a missing file,
    or modality dropout at training time) leaves a channel's values exactly as they were. With the
    union of the present modalities as the region, t2's voxels where only t1 is non-zero would be
    (0 − mean)/std ≈ −9 with t1 present and 0 without it."""
    import types

    from data_prepare.process import normalise
    from pipeline.tasks import get_task

    rng = np.random.default_rng(5)
    t1 = np.zeros((12, 12, 12), np.float32)
    t1[2:10, 3:9, 2:11] = rng.normal(300, 40, (8, 6, 9))
    t2 = np.zeros_like(t1)
    t2[3:10, 3:9, 2:11] = rng.normal(800, 90, (7, 6, 9))  # one slice less than t1
    flair = np.zeros_like(t1)
    flair[2:11, 2:9, 2:11] = rng.normal(500, 60, (9, 7, 9))  # a slightly larger foreground
    task, cfg = get_task("brats"), PrepareSection()
    names = task.modalities  # flair, t1, t1ce, t2

    def run(**present: np.ndarray) -> tuple[np.ndarray, tuple]:
        case = types.SimpleNamespace(shape=t1.shape, channels={m: present.get(m) for m in names})
        image, box, _ = normalise(case, task, cfg)  # type: ignore[arg-type]
        return image, box

    full, box = run(flair=flair, t1=t1, t2=t2)
    alone, _ = run(t2=t2)
    pair, _ = run(t1=t1, t2=t2)
    i2 = names.index("t2")
    assert np.array_equal(full[i2], alone[i2]) and np.array_equal(full[i2], pair[i2])
    assert np.array_equal(full[names.index("t1")], pair[names.index("t1")])
    fg = t2 != 0
    assert not full[i2][~fg].any()
    assert full[i2][fg].mean() == pytest.approx(0.0, abs=1e-5) and full[i2][fg].std() == pytest.approx(1.0, abs=1e-5)
    assert not full[names.index("t1ce")].any()  # missing: all zero
    assert box == ((2, 11), (2, 9), (2, 11))  # the brain box: every present modality's foreground
    mask = pp.mri_brain_mask([t1, None, t2])
    assert mask.sum() == (t1 != 0).sum()


def test_fine_grid_holds_the_nominal_crop_exactly():
    """Slicing the stored (extended) fine array at `nominal` equals resampling the nominal box."""
    rng = np.random.default_rng(6)
    shape, spacing = (40, 150, 80), (2.5, 0.8, 0.9)
    image = rng.normal(size=shape).astype(np.float32)
    cfg = PrepareSection(fine_size=(16, 32, 24), fine_jitter_mm=12.0)
    nominal = pp.expand_box_mm(((12, 25), (60, 90), (20, 50)), 20.0, spacing, shape)  # room along y only
    grid = fine_grid(nominal, shape, spacing, cfg)
    stored = pp.resample_linear(image, grid["shape"], tuple(grid["region"]))
    sl = tuple(slice(lo, hi) for lo, hi in grid["nominal"])
    direct = pp.resample_linear(image, cfg.fine_size, nominal)
    np.testing.assert_allclose(stored[sl], direct, atol=1e-5)
    assert grid["size"] == [16, 32, 24]
    assert all(lo >= 0 and hi <= n for (lo, hi), n in zip(grid["region"], shape, strict=True))
    # about 12 mm of extra context per side where the image allows it
    pads = [(grid["nominal"][a][0], grid["shape"][a] - grid["nominal"][a][1]) for a in range(3)]
    assert all(p * grid["spacing"][a] <= 12.0 + 1e-6 for a in range(3) for p in pads[a])
    assert min(pads[1]) * grid["spacing"][1] > 12.0 - grid["spacing"][1]


def test_box_mapping_between_grids_round_trips():
    box = ((3.0, 17.5), (0.0, 64.0), (10.25, 30.0))
    there = pp.scale_box(box, (40, 64, 80), (160, 160, 160))
    back = pp.scale_box(there, (160, 160, 160), (40, 64, 80))
    np.testing.assert_allclose(np.asarray(back), np.asarray(box))
    assert pp.round_box_outward(((2.2, 7.8), (0.0, 3.0), (1.5, 1.6))) == ((2, 8), (0, 3), (1, 2))
