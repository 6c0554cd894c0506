"""Geometry-exact I/O: round trips through canonical orientation on LPS, RAS, permuted and
oblique images with anisotropic spacing, and one-line errors for bad files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from prepare_fixtures import rotation

from pipeline.errors import ImageError
from pipeline.image_io import (
    Geometry,
    Reorientation,
    canonical_geometry,
    from_canonical,
    read_image,
    to_canonical,
    write_image,
)

PERM_FLIP = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], dtype=float)  # permuted + flipped axes
DIRECTIONS = {
    "lps": np.eye(3),
    "ras": np.diag([-1.0, -1.0, 1.0]),
    "permuted": PERM_FLIP,
    "oblique": rotation(0.3, -0.2, 0.5),
    "oblique_permuted": rotation(0.1, 0.25, -0.15) @ PERM_FLIP,
}


def make_image(direction: np.ndarray, dtype=np.float32, seed: int = 0) -> sitk.Image:
    rng = np.random.default_rng(seed)
    array = rng.normal(size=(7, 11, 13)).astype(dtype)  # (z, y, x), all sizes distinct
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 1.3, 3.1))
    image.SetOrigin((-12.5, 40.25, 101.0))
    image.SetDirection(tuple(direction.ravel()))
    return image


def physical_points(geometry: Geometry, mask_zyx: np.ndarray) -> np.ndarray:
    """Physical coordinates (LPS, mm) of the voxels set in `mask_zyx`."""
    idx_xyz = np.argwhere(mask_zyx)[:, ::-1].astype(float)
    d = geometry.direction_matrix
    return (d @ (idx_xyz * np.asarray(geometry.spacing)).T).T + np.asarray(geometry.origin)


def assert_same_geometry(a: sitk.Image, b: sitk.Image, tol: float = 1e-6) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=tol)


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
@pytest.mark.parametrize("suffix", [".nii.gz", ".mha", ".nrrd"])
def test_round_trip_through_canonical_is_exact(tmp_path, name, suffix):
    source = make_image(DIRECTIONS[name])
    path = write_image(source, tmp_path / f"img{suffix}")
    image = read_image(path)
    assert_same_geometry(image, source)

    canonical, reo = to_canonical(image)
    back = from_canonical(canonical, reo)
    out = read_image(write_image(back, tmp_path / f"back{suffix}"))

    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(image))
    assert_same_geometry(out, image)


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_canonical_direction_is_closest_to_identity(name):
    image = make_image(DIRECTIONS[name])
    _, reo = to_canonical(image)
    d = reo.canonical.direction_matrix
    # every canonical axis points along +L, +P, +S respectively (largest cosine positive, on the diagonal)
    assert np.all(np.diag(d) > 0.7), d
    assert np.all(np.argmax(np.abs(d), axis=0) == np.arange(3))


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_canonical_array_matches_simpleitk_permute_and_flip(name):
    """Our numpy reorientation and its geometry agree with SimpleITK's own filters."""
    image = make_image(DIRECTIONS[name])
    canonical, reo = to_canonical(image)
    expected = sitk.Flip(sitk.PermuteAxes(image, list(reo.perm)), list(reo.flip), flipAboutOrigin=False)
    np.testing.assert_array_equal(canonical, sitk.GetArrayFromImage(expected))
    assert reo.canonical.differences(Geometry.of(expected), tol=1e-9) == []


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_voxels_keep_their_physical_position(name):
    """A voxel's value sits at the same physical point before and after reorientation."""
    image = make_image(DIRECTIONS[name])
    array = sitk.GetArrayFromImage(image)
    canonical, reo = to_canonical(image)
    mask = np.zeros(array.shape, bool)
    mask[2, 3, 4] = True
    mask[6, 10, 0] = True
    canon_mask = reo.array_to_canonical(mask)
    # sort both point lists by value to pair them
    pts_a = physical_points(reo.original, mask)[np.argsort(array[mask])]
    pts_b = physical_points(reo.canonical, canon_mask)[np.argsort(canonical[canon_mask])]
    np.testing.assert_allclose(pts_a, pts_b, atol=1e-6)


@pytest.mark.parametrize("name", ["ras", "permuted", "oblique_permuted"])
def test_label_written_for_reoriented_image_overlays_source_label(tmp_path, name):
    image = make_image(DIRECTIONS[name])
    label = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    label[1:4, 2:7, 5:9] = 3
    label[5, 9, 12] = 7
    _, reo = to_canonical(image)
    canon_label = reo.array_to_canonical(label)
    written = read_image(write_image(from_canonical(canon_label, reo), tmp_path / "lab.nii.gz"))
    assert written.GetPixelID() == sitk.sitkUInt8
    for value in (3, 7):
        src_pts = physical_points(reo.original, label == value)
        out_pts = physical_points(Geometry.of(written), sitk.GetArrayFromImage(written) == value)
        np.testing.assert_allclose(np.sort(src_pts, axis=0), np.sort(out_pts, axis=0), atol=1e-5)


@pytest.mark.parametrize("name", ["lps", "ras"])
def test_canonical_array_owns_its_memory(tmp_path, name):
    """The array must stay valid after the image it came from is freed (LPS needs no reorder)."""
    source = make_image(DIRECTIONS[name])
    expected = sitk.GetArrayFromImage(source)
    path = write_image(source, tmp_path / "img.nii.gz")
    canonical, reo = to_canonical(read_image(path))  # the image is dropped right here
    import gc

    gc.collect()
    _ = [np.ones((7, 11, 13), np.float32) * i for i in range(20)]  # reuse freed memory
    np.testing.assert_array_equal(reo.array_to_original(canonical), expected)


def test_multi_member_gzip_nifti_is_accepted(tmp_path):
    """pigz-style multi-member streams are valid gzip; only truncation is rejected."""
    source = make_image(np.eye(3))
    plain = write_image(source, tmp_path / "img.nii", compress=False).read_bytes()
    path = tmp_path / "multi.nii.gz"
    path.write_bytes(gzip.compress(plain[:1000]) + gzip.compress(plain[1000:]))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(path)), sitk.GetArrayFromImage(source))


def test_reorientation_json_round_trip():
    _, reo = to_canonical(make_image(DIRECTIONS["oblique_permuted"]))
    again = Reorientation.from_json(reo.to_json())
    assert again == reo


def test_canonical_geometry_of_identity_is_identity():
    geo = Geometry.of(make_image(np.eye(3)))
    assert canonical_geometry(geo, (0, 1, 2), (False, False, False)) == geo


def test_extra_leading_axes_are_preserved():
    image = make_image(DIRECTIONS["permuted"])
    _, reo = to_canonical(image)
    probs = np.stack([sitk.GetArrayFromImage(image)] * 2)
    canon = reo.array_to_canonical(probs)
    assert canon.shape[0] == 2
    np.testing.assert_array_equal(reo.array_to_original(canon), probs)


# bad files ---------------------------------------------------------------------------------
def _assert_one_line_naming(exc: ImageError, path) -> None:
    message = str(exc)
    assert "\n" not in message
    assert str(path) in message


def test_corrupt_file_gives_one_line_error(tmp_path):
    path = tmp_path / "broken_0000.nii.gz"
    path.write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    with pytest.raises(ImageError) as info:
        read_image(path)
    _assert_one_line_naming(info.value, path)
    assert "corrupt" in str(info.value)


def test_truncated_file_gives_one_line_error(tmp_path):
    good = write_image(make_image(np.eye(3)), tmp_path / "good.nii.gz")
    path = tmp_path / "truncated.nii.gz"
    path.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageError) as info:
        read_image(path)
    _assert_one_line_naming(info.value, path)


def test_4d_image_gives_one_line_error(tmp_path):
    path = tmp_path / "four_d.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.float32), isVector=False), str(path))
    with pytest.raises(ImageError) as info:
        read_image(path)
    _assert_one_line_naming(info.value, path)
    assert "3D" in str(info.value)


def test_nan_image_gives_one_line_error(tmp_path):
    array = np.zeros((4, 5, 6), np.float32)
    array[1, 2, 3] = np.nan
    array[2, 2, 2] = np.inf
    path = tmp_path / "nan.mha"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(ImageError) as info:
        read_image(path)
    _assert_one_line_naming(info.value, path)
    assert "2 non-finite" in str(info.value)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        read_image(tmp_path / "nope.nii.gz")
    other = tmp_path / "image.png"
    other.write_bytes(b"x")
    with pytest.raises(ImageError, match="unsupported"):
        read_image(other)


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    write_image(make_image(np.eye(3)), tmp_path / "a.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz"]


def test_failed_write_leaves_previous_file_intact(tmp_path, monkeypatch):
    target = write_image(make_image(np.eye(3), seed=1), tmp_path / "a.nii.gz")
    before = target.read_bytes()

    def boom(*_args, **_kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", boom)
    with pytest.raises(RuntimeError):
        write_image(make_image(np.eye(3), seed=2), target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz"]


def test_mha_from_a_nifti_is_written_without_metaimage_warnings(tmp_path):
    """A NIfTI's header fields (ITK_FileNotes, qto_xyz, ...) cannot go into a .mha: they are
    dropped quietly instead of MetaImageIO printing a warning for each, and the source image
    keeps them. Checked in a child process, where ITK's C++ warnings reach stderr."""
    import subprocess
    import sys

    src = tmp_path / "ct.nii.gz"
    image = sitk.GetImageFromArray(np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((1.0, -2.0, 3.0))
    sitk.WriteImage(image, str(src))
    code = (
        "import sys, SimpleITK as sitk\n"
        "from pipeline.image_io import read_image, write_image\n"
        "img = read_image(sys.argv[1]); n = len(img.GetMetaDataKeys())\n"
        "write_image(img, sys.argv[2]); assert len(img.GetMetaDataKeys()) == n > 0, n\n"
    )
    out = tmp_path / "ct.mha"
    proc = subprocess.run([sys.executable, "-c", code, str(src), str(out)], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr
    assert "MetaImageIO" not in proc.stderr and "WARNING" not in proc.stderr, proc.stderr
    back, nifti = sitk.ReadImage(str(out)), sitk.ReadImage(str(src))
    assert back.GetSpacing() == nifti.GetSpacing() and back.GetOrigin() == nifti.GetOrigin()
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
