"""Predictions come back in exactly the input geometry, whatever the header orientation (issue #5).

The synthetic anatomy is generated once in canonical LPS and written through LPS, RAS, permuted
and oblique headers; all four canonicalise to the same array, so a deterministic predictor must
give the same canonical label map for each — any slip in reorientation, cropping or pasting
shows up as a difference. Random-initialised weights are enough: accuracy does not matter here.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from predict_fixtures import make_random_weights

from pipeline.config import PredictSection
from pipeline.image_io import Geometry, read_image, to_canonical
from pipeline.inference.runner import run_predict
from pipeline.inference.synthetic import write_flare_case

ORIENTATIONS = ("lps", "ras", "permuted", "oblique")


@pytest.fixture(scope="module")
def flare_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("geo")
    weights = make_random_weights(root / "w", coarse_size=(16, 24, 24), fine_size=(16, 32, 32))
    inp = root / "in"
    for o in ORIENTATIONS:
        write_flare_case(inp / f"case-{o}_0000.nii.gz", None, seed=7, orientation=o)
    result = run_predict(inp, root / "out", PredictSection(weights=weights, device="cpu"))
    return inp, root / "out", result


def test_every_case_written_with_exact_input_geometry(flare_run):
    inp, out, result = flare_run
    assert sorted(result.written) == sorted(f"case-{o}" for o in ORIENTATIONS) and not result.failed
    for o in ORIENTATIONS:
        src = sitk.ReadImage(str(inp / f"case-{o}_0000.nii.gz"))
        pred = read_image(out / f"case-{o}.nii.gz")
        assert pred.GetPixelID() == sitk.sitkUInt8
        assert pred.GetSize() == src.GetSize()
        assert pred.GetSpacing() == src.GetSpacing()
        # origin/direction: NIfTI stores them as float32 (sform/quaternion), so a re-written
        # oblique header can move by ~1e-9 on the round trip; that is the format, not a resample
        assert not Geometry.of(pred).differences(Geometry.of(src), tol=1e-6)


def test_same_anatomy_same_prediction_in_every_orientation(flare_run):
    _, out, _ = flare_run
    canon = {o: to_canonical(read_image(out / f"case-{o}.nii.gz"))[0] for o in ORIENTATIONS}
    ref = canon["lps"]
    assert ref.any(), "random weights should still label something"
    for o in ORIENTATIONS[1:]:
        assert np.array_equal(canon[o], ref), f"{o} prediction differs from lps in canonical space"


def test_labels_are_only_task_labels(flare_run):
    _, out, _ = flare_run
    values = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case-lps.nii.gz"))))
    assert set(values.tolist()) <= set(range(14)), values


def test_sliding_window_path_end_to_end(tmp_path, monkeypatch):
    """Fine grid larger than the trained patch → Gaussian sliding window, same output grid."""
    from predict_fixtures import ct_volume, save_image
    from prepare_fixtures import OBLIQUE_PERMUTED

    from pipeline.inference import sliding_window

    weights = make_random_weights(tmp_path / "w", fine_size=(16, 32, 32), fine_patch=(16, 16, 16))
    save_image(ct_volume((40, 48, 44)), tmp_path / "in" / "c_0000.nii.gz", direction=OBLIQUE_PERMUTED)
    calls = []
    real = sliding_window.window_starts
    monkeypatch.setattr(sliding_window, "window_starts", lambda *a: calls.append(a) or real(*a))
    result = run_predict(tmp_path / "in", tmp_path / "out", PredictSection(weights=weights, device="cpu"))
    assert result.written == ["c"]
    assert (32, 16, 0.5) in calls  # y and x were tiled with the 16-voxel patch at 50 % overlap
    src, pred = sitk.ReadImage(str(tmp_path / "in" / "c_0000.nii.gz")), read_image(tmp_path / "out" / "c.nii.gz")
    assert pred.GetSize() == src.GetSize() and not Geometry.of(pred).differences(Geometry.of(src), tol=1e-6)
