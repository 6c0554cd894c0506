"""Inference building blocks against reference computations (issue #5)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from predict_fixtures import make_random_weights
from scipy import ndimage

from pipeline.inference.postprocess import ClassRule, PostprocessPlan, SmallLesionRule, postprocess
from pipeline.inference.roi import roi_from_coarse
from pipeline.inference.sliding_window import gaussian_importance, predict_grid, window_starts
from pipeline.weights import WeightsError, find_weights, load_weights, read_manifest


# postprocessing ----------------------------------------------------------------------------
def _blobs() -> np.ndarray:
    lab = np.zeros((20, 30, 30), np.uint8)
    lab[2:10, 2:12, 2:12] = 1  # 800 voxels
    lab[14:16, 20:22, 20:22] = 1  # 8 voxels, separate
    lab[2:6, 20:26, 2:8] = 2  # 144
    lab[12:15, 2:5, 20:23] = 2  # 27
    lab[15:18, 10:13, 10:13] = 3  # 27
    return lab


def test_largest_component_per_class_matches_scipy():
    lab = _blobs()
    out = postprocess(lab.copy(), PostprocessPlan(default=ClassRule(mode="largest")), (1.0, 1.0, 1.0))
    for c in (1, 2, 3):
        comps, n = ndimage.label(lab == c, structure=np.ones((3, 3, 3)))
        sizes = ndimage.sum_labels(np.ones_like(comps), comps, range(1, n + 1))
        expected = comps == (int(np.argmax(sizes)) + 1)
        assert np.array_equal(out == c, expected)


def test_threshold_in_mm3_uses_the_spacing_and_per_class_rules():
    lab = _blobs()
    # voxel = 2 mm³: class 1's 8-voxel speck is 16 mm³ (< 20 → removed); class 2 keeps both (54 ≥ 20)
    plan = PostprocessPlan(default=ClassRule(mode="threshold", min_volume_mm3=20.0), classes={3: ClassRule(mode="none")})
    out = postprocess(lab.copy(), plan, (1.0, 1.0, 2.0))
    assert np.count_nonzero(out == 1) == 800
    assert np.count_nonzero(out == 2) == 144 + 27
    assert np.count_nonzero(out == 3) == 27
    # the largest component is dropped too when it is below the volume threshold
    out = postprocess(lab.copy(), PostprocessPlan(default=ClassRule(mode="largest", min_volume_mm3=100.0)), (1.0, 1.0, 1.0))
    assert np.count_nonzero(out == 3) == 0 and np.count_nonzero(out == 2) == 144


def test_small_lesion_rule_relabels_whole_class_and_never_creates_overlap():
    lab = _blobs()
    plan = PostprocessPlan(default=ClassRule(mode="none"), small_lesion=SmallLesionRule(label=3, min_voxels=28, relabel_to=1))
    out = postprocess(lab.copy(), plan, (1.0, 1.0, 1.0))
    assert np.count_nonzero(out == 3) == 0
    assert np.array_equal(out == 1, (lab == 1) | (lab == 3))
    # above the threshold nothing changes
    plan = PostprocessPlan(default=ClassRule(mode="none"), small_lesion=SmallLesionRule(label=3, min_voxels=27, relabel_to=1))
    assert np.array_equal(postprocess(lab.copy(), plan, (1, 1, 1)), lab)


def test_plan_from_config_dict():
    plan = PostprocessPlan.from_dict({"default": {"mode": "threshold", "min_volume_mm3": 5},
                                      "classes": {"3": {"mode": "none"}}, "connectivity": 6,
                                      "small_lesion": {"label": 3, "min_voxels": 500, "relabel_to": 1}})
    assert plan.rule(3).mode == "none" and plan.rule(1) == ClassRule(mode="threshold", min_volume_mm3=5)
    assert plan.connectivity == 6 and plan.small_lesion == SmallLesionRule(label=3, min_voxels=500, relabel_to=1)



def test_one_postprocessing_schema_for_config_manifest_and_defaults():
    from pipeline.config import load_config
    from pipeline.errors import ConfigError
    from pipeline.inference.postprocess import TASK_DEFAULTS, plan_for

    cfg = load_config(None, ["predict.postprocess={default: {mode: none}, connectivity: 6}"])
    assert isinstance(cfg.predict.postprocess, PostprocessPlan) and cfg.predict.postprocess.connectivity == 6
    manifest = {"postprocess": {"default": {"mode": "threshold", "min_volume_mm3": 3}}}
    assert plan_for("flare", cfg.predict.postprocess, manifest) is cfg.predict.postprocess  # config first
    assert plan_for("flare", None, manifest).rule(1) == ClassRule(mode="threshold", min_volume_mm3=3)  # then manifest
    assert plan_for("brats", None, {}) == TASK_DEFAULTS["brats"]  # then the task default
    with pytest.raises(ConfigError, match=r"weights manifest postprocess: connectivity: .*6, 18 or 26"):
        plan_for("flare", None, {"postprocess": {"connectivity": 4}})
    with pytest.raises(ConfigError, match=r"predict\.postprocess\.default\.mode"):
        load_config(None, ["predict.postprocess={default: {mode: biggest}}"])


# sliding window ----------------------------------------------------------------------------
@pytest.mark.parametrize("size,patch,overlap", [(10, 10, 0.5), (11, 10, 0.5), (37, 16, 0.5), (100, 32, 0.25)])
def test_window_starts_cover_with_flush_end(size, patch, overlap):
    starts = window_starts(size, patch, overlap)
    assert starts[0] == 0 and starts[-1] + patch == max(size, patch)
    covered = np.zeros(max(size, patch), bool)
    for s in starts:
        covered[s:s + patch] = True
    assert covered.all()
    assert all(b - a <= int(patch * (1 - overlap)) for a, b in itertools.pairwise(starts))


def test_gaussian_importance_is_centred_and_positive():
    g = gaussian_importance((8, 16, 16), torch.device("cpu"))
    assert g.min() > 0 and float(g.max()) == 1.0
    assert tuple(np.unravel_index(int(g.argmax()), g.shape)) in {(3, 7, 7), (4, 8, 8), (3, 8, 8), (4, 7, 7)}


def _pointwise(x: torch.Tensor) -> torch.Tensor:
    """A position-independent 'network': any tiling must give the same logits."""
    return torch.cat([x.sin(), x.cos(), 0.5 * x], 1)


def test_sliding_window_equals_whole_pass_for_a_pointwise_net():
    x = torch.randn(1, 1, 19, 37, 30)
    whole = predict_grid(_pointwise, x, 3, (32, 64, 64), divisor=(1, 1, 1))
    sliding = predict_grid(_pointwise, x, 3, (8, 16, 16), overlap=0.5)
    assert sliding.shape == (3, 19, 37, 30)
    torch.testing.assert_close(sliding, whole, rtol=1e-5, atol=1e-5)
    # padding up to the divisor is undone; mirror TTA of a pointwise net changes nothing
    padded = predict_grid(_pointwise, x, 3, (32, 64, 64), divisor=(16, 16, 16), mirror_axes=(0, 1, 2))
    torch.testing.assert_close(padded, whole, rtol=1e-5, atol=1e-5)


def test_mirror_tta_averages_flipped_predictions():
    x = torch.randn(1, 1, 8, 8, 8)
    ramp = torch.linspace(0, 1, 8)[None, None, None, None, :]

    def net(t):  # not flip-invariant along x
        return t + ramp

    out = predict_grid(net, x, 1, (8, 8, 8), divisor=(1, 1, 1), mirror_axes=(2,))
    torch.testing.assert_close(out[0], (x + (ramp + ramp.flip(-1)) / 2)[0, 0])


# logits → label map ------------------------------------------------------------------------
def test_chunked_separable_upsampling_equals_trilinear_then_argmax(tmp_path):
    from pipeline.config import PredictSection
    from pipeline.inference.engine import Predictor
    from pipeline.weights import load_weights as lw

    weights = lw(make_random_weights(tmp_path / "w"))
    pred = Predictor(weights, torch.device("cpu"), PredictSection(upsample_chunk_floats=5000))  # forces many chunks
    logits = torch.randn(14, 6, 9, 7)
    out_shape = (23, 31, 20)
    ref = F.interpolate(logits[None], size=out_shape, mode="trilinear", align_corners=False)[0].argmax(0)
    got = pred.upsample_argmax(logits, out_shape)
    assert got.dtype == np.uint8 and got.shape == out_shape
    assert np.mean(got == ref.numpy()) > 0.9999  # float ties aside, identical


# coarse → ROI -------------------------------------------------------------------------------
def test_roi_box_from_coarse_components():
    coarse = np.zeros((20, 20, 20), np.uint8)
    coarse[8:12, 5:10, 6:12] = 1  # main organ
    coarse[9:11, 12:14, 12:14] = 2
    coarse[0:1, 0:1, 0:1] = 3  # 1 voxel: below the volume threshold
    shape, spacing = (100, 200, 200), (5.0, 1.0, 1.0)  # coarse voxel = 25 × 10 × 10 mm = 2500 mm³
    res = roi_from_coarse(coarse, shape, spacing, margin_mm=20.0, min_volume_mm3=3000.0, z_window_mm=None)
    assert res.found == [1, 2]
    # coarse box z 8..12 → canonical 40..60, ± 20 mm / 5 mm = 4 voxels; y 5..14 → 50..140 ± 20
    assert res.box == ((36, 64), (30, 160), (40, 160))


def test_roi_z_window_drops_far_away_components():
    coarse = np.zeros((40, 10, 10), np.uint8)
    coarse[10:14, 2:8, 2:8] = 1  # largest: centroid z = 12 (coarse voxel 10 mm)
    coarse[36:38, 4:6, 4:6] = 2  # 250 mm away
    res = roi_from_coarse(coarse, (40, 10, 10), (10.0, 1.0, 1.0), margin_mm=0.0, min_volume_mm3=0.0, z_window_mm=60.0)
    assert res.box[0] == (10, 18)  # centroid edge-z 12 ± 6 voxels, clipped to the union box
    res = roi_from_coarse(coarse, (40, 10, 10), (10.0, 1.0, 1.0), margin_mm=0.0, min_volume_mm3=0.0, z_window_mm=None)
    assert res.box[0] == (10, 38)


def test_roi_none_when_nothing_found():
    res = roi_from_coarse(np.zeros((8, 8, 8), np.uint8), (16, 16, 16), (1, 1, 1), margin_mm=5)
    assert res.box is None and res.found == []


# weights -----------------------------------------------------------------------------------
def test_weights_roundtrip_and_tamper_detection(tmp_path):
    folder = make_random_weights(tmp_path / "flare_x")
    manifest = read_manifest(folder)
    assert set(manifest["files"]) == {"coarse.safetensors", "coarse.json", "fine.safetensors", "fine.json"}
    assert manifest["task"] == "flare" and manifest["num_classes"] == 14 and "torch" in manifest["versions"]
    loaded = load_weights(folder)
    assert not loaded.stages["fine"].model.training
    assert loaded.stages["coarse"].model.head.weight.dtype == torch.float32  # fp16 on disk, fp32 in memory
    # a flipped byte in a weights file is caught before anything is loaded
    w = folder / "fine.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"fine\.safetensors: sha256 mismatch"):
        load_weights(folder)
    w.unlink()
    with pytest.raises(WeightsError, match="missing"):
        load_weights(folder)


def test_weights_refuse_a_manifest_that_does_not_match_the_tensors(tmp_path):
    folder = make_random_weights(tmp_path / "w")
    m = json.loads((folder / "manifest.json").read_text())
    m["stages"]["fine"]["model"]["channels"] = [4, 8, 32]
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(WeightsError, match="does not match the fine model config"):
        load_weights(folder)


def test_weights_never_unpickle(tmp_path):
    folder = make_random_weights(tmp_path / "w")
    m = json.loads((folder / "manifest.json").read_text())
    evil = folder / "coarse.pt"
    torch.save({"x": torch.zeros(1)}, evil)  # a pickle
    m["stages"]["coarse"]["weights"] = evil.name
    m["files"][evil.name] = {"sha256": __import__("hashlib").sha256(evil.read_bytes()).hexdigest(),
                             "bytes": evil.stat().st_size}
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_weights(folder)


def test_find_weights_prefers_trained_over_demo(tmp_path):
    make_random_weights(tmp_path / "flare_demo")
    make_random_weights(tmp_path / "brats_demo", task="brats")
    assert find_weights(tmp_path, "flare").name == "flare_demo"
    assert find_weights(tmp_path, "brats").name == "brats_demo"
    make_random_weights(tmp_path / "flare")
    assert find_weights(tmp_path, "flare").name == "flare"
    assert find_weights(tmp_path / "brats_demo", "flare").name == "brats_demo"  # an explicit folder wins
    with pytest.raises(WeightsError, match="no weights for task"):
        find_weights(tmp_path / "nothing", "flare")


def test_onednn_conv_patch_is_numerically_the_same():
    from coarse_seg import build_model
    from pipeline.inference.cpu_conv import use_onednn

    torch.manual_seed(0)
    model = build_model({"in_channels": 1, "num_classes": 4, "channels": [4, 8, 16]}).eval()
    x = torch.randn(1, 1, 12, 20, 16)
    with torch.inference_mode():
        ref = model(x)
        assert use_onednn(model) > 5
        got = model(x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


# reading a case (shared by prepare and predict) ------------------------------------------------
def test_case_images_are_canonical_and_reject_disagreeing_grids(tmp_path):
    import SimpleITK as sitk

    from pipeline.case_images import read_case_images
    from pipeline.errors import CaseError

    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.9, 2.5))
    img.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, -1))  # x and z flipped relative to LPS+
    sitk.WriteImage(img, str(tmp_path / "a.nii.gz"))
    case = read_case_images("c1", {"t1": tmp_path / "a.nii.gz", "t2": None}, 1e-3)
    assert case.channels["t2"] is None and case.shape == (4, 5, 6) and case.spacing_zyx == pytest.approx((2.5, 0.9, 0.8))
    np.testing.assert_array_equal(case.channels["t1"], arr[::-1, :, ::-1])  # flips undone, no resampling
    np.testing.assert_array_equal(case.reorientation.array_to_original(case.channels["t1"]), arr)
    img.SetSpacing((0.8, 0.9, 3.0))
    sitk.WriteImage(img, str(tmp_path / "b.nii.gz"))
    with pytest.raises(CaseError, match="case c1: t2 grid differs from t1: spacing"):
        read_case_images("c1", {"t1": tmp_path / "a.nii.gz", "t2": tmp_path / "b.nii.gz"}, 1e-3)
    with pytest.raises(CaseError, match="case c1: no image file"):
        read_case_images("c1", {"t1": None}, 1e-3)


def test_upsampling_interpolates_only_boundary_cells_and_equals_trilinear_then_argmax(tmp_path, monkeypatch):
    """Organ-like logits (smooth blobs): most cells agree and take their label by lookup; the
    boundary voxels go through the gathered 8-corner interpolation, and the map is still
    F.interpolate's trilinear upsampling followed by argmax."""
    from pipeline.config import PredictSection
    from pipeline.inference import engine
    from pipeline.weights import load_weights as lw

    grid = torch.stack(torch.meshgrid(*(torch.linspace(0, 1, n) for n in (12, 16, 14)), indexing="ij"))
    centres = torch.tensor([[0.5, 0.5, 0.5], [0.2, 0.3, 0.7], [0.8, 0.6, 0.3], [0.4, 0.8, 0.8], [0.7, 0.2, 0.2]])
    logits = torch.stack([-((grid - c[:, None, None, None]) ** 2).sum(0) * 20 for c in centres])
    logits[0] += 0.05  # background where no blob is near
    out_shape = (40, 50, 45)
    ref = F.interpolate(logits[None], size=out_shape, mode="trilinear", align_corners=False)[0].argmax(0)
    points = []
    real = engine._trilinear_points
    monkeypatch.setattr(engine, "_trilinear_points", lambda planes, *taps: points.append(len(taps[0][0])) or
                        real(planes, *taps))
    pred = engine.Predictor(lw(make_random_weights(tmp_path / "w")), torch.device("cpu"),
                            PredictSection(upsample_chunk_floats=50_000))
    got = pred.upsample_argmax(logits, out_shape)
    assert len(set(np.unique(got))) == 5
    assert points and 0 < sum(points) < 0.25 * np.prod(out_shape)  # only boundary voxels interpolated
    assert np.mean(got == ref.numpy()) > 0.9999
