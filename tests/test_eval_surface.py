"""Surface distances against the reference implementations: DeepMind's `surface_distance`
(NSD, HD95, the surfel table) and medpy (`hd95`, `dc`), on random and adversarial masks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from evaluation import surface as S

sd_ref = pytest.importorskip("surface_distance")
from medpy.metric import binary as medpy_binary  # noqa: E402
from surface_distance import lookup_tables  # noqa: E402

TOL = 1e-6
# the reference package uses deprecated scipy namespaces and divides 0/0 for empty masks
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::RuntimeWarning")


@pytest.fixture(autouse=True)
def _numpy2_aliases(monkeypatch):
    # PyPI surface-distance 0.1 still uses np.Inf / np.NaN, removed in numpy 2
    monkeypatch.setattr(np, "Inf", np.inf, raising=False)
    monkeypatch.setattr(np, "NaN", np.nan, raising=False)


def blob(rng: np.random.Generator, shape: tuple[int, ...], sigma: float = 1.5, level: float = 0.5) -> np.ndarray:
    return ndimage.gaussian_filter(rng.random(shape), sigma) > level


def ellipsoid(shape, centre, radii) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0


def adversarial_pairs():
    rng = np.random.default_rng(7)
    shape = (14, 17, 12)
    z = np.zeros(shape, bool)
    one = z.copy()
    one[5, 6, 7] = True
    two = z.copy()
    two[5, 6, 7:9] = True
    border = z.copy()
    border[0, :, :5] = True  # touches three faces of the volume
    border[:, 0, :] = True
    corner = z.copy()
    corner[-1, -1, -1] = True
    full = np.ones(shape, bool)
    shell = full.copy()
    shell[3:-3, 3:-3, 3:-3] = False  # object with a cavity
    return {
        "tiny-1-vs-2": (one, two),
        "single-voxel-identical": (one, one.copy()),
        "border-vs-blob": (border, blob(rng, shape)),
        "corner-voxel-vs-border": (corner, border),
        "full-volume-vs-shell": (full, shell),
        "far-apart": (ellipsoid(shape, (3, 3, 3), (2, 2, 2)), ellipsoid(shape, (11, 13, 9), (2, 3, 2))),
        "pred-empty": (blob(rng, shape), z.copy()),
        "gt-empty": (z.copy(), blob(rng, shape)),
        "both-empty": (z.copy(), z.copy()),
    }


SPACINGS = [(1.0, 1.0, 1.0), (2.5, 0.8, 0.6), (0.35, 4.0, 1.7)]


def compare(gt, pred, spacing):
    mine = S.surface_distances(gt, pred, spacing)
    ref = sd_ref.compute_surface_distances(gt, pred, spacing)
    # the raw sorted distance / area lists, not only the summaries
    for a, b in ((mine.gt_to_pred, ref["distances_gt_to_pred"]), (mine.pred_to_gt, ref["distances_pred_to_gt"]),
                 (mine.areas_gt, ref["surfel_areas_gt"]), (mine.areas_pred, ref["surfel_areas_pred"])):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=TOL)
    for tol in (0.5, 1.0, 2.0, 3.0, 7.0):
        expected = sd_ref.compute_surface_dice_at_tolerance(ref, tol)
        got = S.surface_dice(mine, tol)
        assert (np.isnan(got) and np.isnan(expected)) or abs(got - expected) <= TOL, (tol, got, expected)
    for percent in (95, 100, 50):
        assert S.robust_hausdorff(mine, percent) == pytest.approx(sd_ref.compute_robust_hausdorff(ref, percent), abs=TOL)
    expected_dice = sd_ref.compute_dice_coefficient(gt, pred)
    got_dice = S.dice(gt, pred)
    assert (np.isnan(got_dice) and np.isnan(expected_dice)) or abs(got_dice - expected_dice) <= TOL


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.8, 0.6), (0.35, 4.0, 1.7), (3.0, 0.7, 0.7)])
def test_generated_surfel_table_equals_deepmind_for_every_code(spacing):
    np.testing.assert_allclose(S.surfel_area_table(spacing), lookup_tables.create_table_neighbour_code_to_surface_area(spacing),
                               rtol=0, atol=1e-12)


def test_surfel_table_is_symmetric_and_zero_for_uniform_neighbourhoods():
    table = S.surfel_area_table((1.3, 0.7, 2.1))
    assert table[0] == 0 and table[255] == 0
    np.testing.assert_allclose(table, table[::-1])  # a code and its complement share one surface


@pytest.mark.parametrize("seed", range(12))
def test_random_blobs_match_reference(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(6, 26, 3))
    gt = blob(rng, shape, sigma=rng.uniform(0.8, 2.5))
    pred = gt ^ (blob(rng, shape, sigma=1.0, level=0.62)) if seed % 2 else blob(rng, shape)
    compare(gt, pred, tuple(float(v) for v in rng.uniform(0.3, 3.5, 3)))


@pytest.mark.parametrize("name", list(adversarial_pairs()))
@pytest.mark.parametrize("spacing", SPACINGS)
def test_adversarial_masks_match_reference(name, spacing):
    gt, pred = adversarial_pairs()[name]
    compare(gt, pred, spacing)


def test_hand_computed_two_single_voxels():
    # two single voxels 3 apart on axis 0 with 2 mm spacing: the corner grids are 4 mm apart on
    # the near side and 6 mm on the far side; the 8 corners of a voxel have equal areas
    gt = np.zeros((8, 3, 3), bool)
    pred = gt.copy()
    gt[1, 1, 1] = True
    pred[4, 1, 1] = True
    sd = S.surface_distances(gt, pred, (2.0, 1.0, 1.0))
    np.testing.assert_allclose(sd.gt_to_pred, [4, 4, 4, 4, 6, 6, 6, 6])
    assert S.robust_hausdorff(sd, 95) == 6.0
    assert S.surface_dice(sd, 5.0) == pytest.approx(0.5)
    assert S.surface_dice(sd, 6.0) == 1.0
    assert S.dice(gt, pred) == 0.0


def test_identical_masks_score_perfectly_and_empty_rules():
    rng = np.random.default_rng(3)
    m = blob(rng, (20, 20, 20))
    sd = S.surface_distances(m, m, (1.0, 2.0, 3.0))
    assert S.surface_dice(sd, 0.0) == 1.0 and S.robust_hausdorff(sd) == 0.0 and S.dice(m, m) == 1.0
    empty = np.zeros_like(m)
    assert S.robust_hausdorff(S.surface_distances(m, empty, (1, 1, 1))) == np.inf
    assert S.surface_dice(S.surface_distances(m, empty, (1, 1, 1)), 5.0) == 0.0
    assert np.isnan(S.surface_dice(S.surface_distances(empty, empty, (1, 1, 1)), 1.0))
    assert np.isnan(S.dice(empty, empty))


def test_cropping_to_the_bounding_box_changes_nothing():
    rng = np.random.default_rng(11)
    small_gt, small_pred = blob(rng, (10, 12, 9)), blob(rng, (10, 12, 9))
    big_gt = np.zeros((40, 50, 30), bool)
    big_pred = big_gt.copy()
    big_gt[17:27, 20:32, 11:20] = small_gt
    big_pred[17:27, 20:32, 11:20] = small_pred
    a = S.surface_distances(small_gt, small_pred, (1.5, 0.7, 2.2))
    b = S.surface_distances(big_gt, big_pred, (1.5, 0.7, 2.2))
    np.testing.assert_array_equal(a.gt_to_pred, b.gt_to_pred)
    np.testing.assert_array_equal(a.areas_pred, b.areas_pred)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.8, 0.6)])
def test_hd95_voxel_matches_medpy(seed, spacing):
    rng = np.random.default_rng(100 + seed)
    shape = tuple(int(v) for v in rng.integers(6, 24, 3))
    a, b = blob(rng, shape), blob(rng, shape, sigma=2.0)
    if not a.any() or not b.any():
        pytest.skip("random blob came out empty")
    assert S.hd95_voxel(a, b, spacing) == pytest.approx(medpy_binary.hd95(a, b, spacing), abs=TOL)
    assert S.dice(a, b) == pytest.approx(medpy_binary.dc(a, b), abs=TOL)


@pytest.mark.parametrize("name", ["tiny-1-vs-2", "single-voxel-identical", "border-vs-blob", "corner-voxel-vs-border",
                                  "full-volume-vs-shell", "far-apart"])
def test_hd95_voxel_matches_medpy_on_adversarial_masks(name):
    a, b = adversarial_pairs()[name]
    for spacing in SPACINGS:
        assert S.hd95_voxel(a, b, spacing) == pytest.approx(medpy_binary.hd95(a, b, spacing), abs=TOL)
    with pytest.raises(ValueError):
        S.hd95_voxel(a, np.zeros_like(a), (1, 1, 1))


def test_one_dice_for_numpy_and_torch_with_an_explicit_empty_rule():
    import torch

    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 4, (6, 7, 8)), rng.integers(0, 4, (6, 7, 8))
    for labels in (1, (1, 3)):
        ga, pb = S.label_mask(a, labels), S.label_mask(b, labels)
        assert S.dice(ga, pb) == pytest.approx(medpy_binary.dc(ga, pb), abs=TOL)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        assert S.dice(S.label_mask(ta, labels), S.label_mask(tb, labels)) == S.dice(ga, pb)
    empty = np.zeros((3, 3, 3), bool)
    assert np.isnan(S.dice(empty, empty))
    assert S.dice(empty, empty, empty=1.0) == 1.0 and S.dice(empty, empty, empty=0.0) == 0.0
    # the mean over labels leaves out labels empty on both sides (NaN) unless `empty` scores them
    gt, pred = np.array([0, 1, 1, 2, 2, 2]), np.array([0, 1, 0, 2, 2, 0])
    assert S.mean_dice(gt, pred, [1, 2, 3]) == pytest.approx(np.mean([2 / 3, 4 / 5]))
    assert S.mean_dice(gt, pred, [1, 2, 3], empty=1.0) == pytest.approx(np.mean([2 / 3, 4 / 5, 1.0]))
    assert S.mean_dice(np.zeros(4), np.zeros(4), [1, 2], none=0.0) == 0.0


def test_bounding_box_is_the_preprocessing_box_as_slices():
    from pipeline.preprocess import bounding_box

    m = np.zeros((5, 6, 7), bool)
    m[1:3, 2, 4:7] = True
    assert bounding_box(m) == ((1, 3), (2, 3), (4, 7))
    assert S.bounding_box(m) == (slice(1, 3), slice(2, 3), slice(4, 7))
    assert bounding_box(m[2]) == ((2, 3), (4, 7)) and S.bounding_box(np.zeros((2, 2), bool)) is None
