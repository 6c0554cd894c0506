"""Geometry-exact image I/O and lossless reorientation to one canonical orientation.

Conventions
- Images are SimpleITK images; arrays are numpy in SimpleITK's (z, y, x) order.
- Geometry (size/spacing/origin/direction) is kept in ITK (x, y, z) order and LPS physical space.
- Canonical orientation: the axis permutation + flips that bring the direction matrix closest
  to identity (LPS+). For an oblique image the residual rotation stays in the header: no
  resampling, so reorientation is lossless and exactly invertible, whatever the direction.
- Writing back to the input grid copies the recorded original geometry verbatim, so outputs
  carry bit-identical headers instead of values recomputed through floating point.
"""

from __future__ import annotations

import gzip
import itertools
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pipeline.errors import ImageError
from pipeline.fsutil import atomic_path

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
DIRECTION_TOLERANCE = 1e-4  # orthonormality check of the direction matrix
NOTE_KEY = "ITK_FileNotes"  # ITK's name for a NIfTI's `descrip` and a MetaImage's/NRRD's notes


def image_suffix(path: str | Path) -> str | None:
    """The supported image suffix of `path` (`.nii.gz` counts as one), or None."""
    name = str(path).lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), None)


def strip_image_suffix(path: str | Path) -> str:
    name = Path(path).name
    suffix = image_suffix(name)
    return name[: -len(suffix)] if suffix else name


@dataclass(frozen=True)
class Geometry:
    """Physical grid of an image, ITK (x, y, z) order."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major, columns are axis directions

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        return cls(
            size=tuple(int(v) for v in image.GetSize()),  # type: ignore[arg-type]
            spacing=tuple(float(v) for v in image.GetSpacing()),  # type: ignore[arg-type]
            origin=tuple(float(v) for v in image.GetOrigin()),  # type: ignore[arg-type]
            direction=tuple(float(v) for v in image.GetDirection()),
        )

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        if tuple(image.GetSize()) != self.size:
            raise ValueError(f"array size {image.GetSize()} does not match geometry size {self.size}")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return (self.size[2], self.size[1], self.size[0])

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def to_json(self) -> dict[str, Any]:
        return {
            "size": list(self.size),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Geometry:
        return cls(
            size=tuple(int(v) for v in data["size"]),  # type: ignore[arg-type]
            spacing=tuple(float(v) for v in data["spacing"]),  # type: ignore[arg-type]
            origin=tuple(float(v) for v in data["origin"]),  # type: ignore[arg-type]
            direction=tuple(float(v) for v in data["direction"]),
        )

    def differences(self, other: Geometry, tol: float = 1e-5) -> list[str]:
        """Human-readable list of what differs (empty when equal within `tol`)."""
        diffs = []
        if self.size != other.size:
            diffs.append(f"size {self.size} != {other.size}")
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            # relative for spacing/origin magnitudes, absolute for the direction cosines
            scale = 1.0 if name == "direction" else max(1.0, float(np.abs(a).max(initial=0.0)))
            if not np.allclose(a, b, rtol=0, atol=tol * scale):
                diffs.append(f"{name} {tuple(np.round(a, 6))} != {tuple(np.round(b, 6))}")
        return diffs


@dataclass(frozen=True)
class Reorientation:
    """Permutation + flips taking an image to canonical orientation, and the way back.

    `perm[i]` is the original ITK axis that becomes canonical axis i; `flip[i]` says whether
    canonical axis i runs against it. `original` is the exact input geometry.
    """

    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    original: Geometry
    canonical: Geometry

    @property
    def is_identity(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flip)

    # numpy (z, y, x) views of the same transform ------------------------------------
    def _np_axes(self) -> tuple[int, int, int]:
        axes = [0, 0, 0]
        for i in range(3):
            axes[2 - i] = 2 - self.perm[i]
        return tuple(axes)  # type: ignore[return-value]

    def _np_flips(self) -> tuple[int, ...]:
        return tuple(2 - i for i in range(3) if self.flip[i])

    def array_to_canonical(self, array: np.ndarray) -> np.ndarray:
        """Original (z,y,x) array → canonical (z,y,x) array; extra leading axes are kept."""
        lead = array.ndim - 3
        axes = tuple(range(lead)) + tuple(lead + a for a in self._np_axes())
        out = np.transpose(array, axes)
        flips = tuple(lead + a for a in self._np_flips())
        return np.ascontiguousarray(np.flip(out, flips) if flips else out)

    def array_to_original(self, array: np.ndarray) -> np.ndarray:
        """Canonical (z,y,x) array → original (z,y,x) array; extra leading axes are kept."""
        lead = array.ndim - 3
        flips = tuple(lead + a for a in self._np_flips())
        out = np.flip(array, flips) if flips else array
        inverse = np.argsort(self._np_axes())
        axes = tuple(range(lead)) + tuple(lead + int(a) for a in inverse)
        return np.ascontiguousarray(np.transpose(out, axes))

    def to_json(self) -> dict[str, Any]:
        return {
            "perm": list(self.perm),
            "flip": list(self.flip),
            "original": self.original.to_json(),
            "canonical": self.canonical.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Reorientation:
        return cls(
            perm=tuple(int(v) for v in data["perm"]),  # type: ignore[arg-type]
            flip=tuple(bool(v) for v in data["flip"]),  # type: ignore[arg-type]
            original=Geometry.from_json(data["original"]),
            canonical=Geometry.from_json(data["canonical"]),
        )


def closest_axis_permutation(direction: np.ndarray) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """Permutation and flips that make `direction` as close to identity as possible.

    Maximises Σ|D[i, perm[i]]| over the 6 permutations (exhaustive, so oblique directions
    with nearly equal cosines are still resolved deterministically).
    """
    best: tuple[float, tuple[int, ...]] | None = None
    for perm in itertools.permutations(range(3)):
        score = sum(abs(direction[i, perm[i]]) for i in range(3))
        if best is None or score > best[0] + 1e-12:
            best = (score, perm)
    assert best is not None
    perm = best[1]
    flip = tuple(bool(direction[i, perm[i]] < 0) for i in range(3))
    return perm, flip  # type: ignore[return-value]


def canonical_geometry(geometry: Geometry, perm: tuple[int, ...], flip: tuple[bool, ...]) -> Geometry:
    """Geometry of the permuted/flipped grid, covering the same physical voxels."""
    d = geometry.direction_matrix
    size = np.asarray(geometry.size)
    spacing = np.asarray(geometry.spacing)
    origin = np.asarray(geometry.origin)
    new_dir = np.empty((3, 3))
    index_of_new_origin = np.zeros(3)
    for i in range(3):
        sign = -1.0 if flip[i] else 1.0
        new_dir[:, i] = sign * d[:, perm[i]]
        if flip[i]:
            index_of_new_origin[perm[i]] = size[perm[i]] - 1
    new_origin = origin + d @ (index_of_new_origin * spacing)
    return Geometry(
        size=tuple(int(size[p]) for p in perm),  # type: ignore[arg-type]
        spacing=tuple(float(spacing[p]) for p in perm),  # type: ignore[arg-type]
        origin=tuple(float(v) for v in new_origin),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in new_dir.ravel()),
    )


def reorientation_for(geometry: Geometry) -> Reorientation:
    perm, flip = closest_axis_permutation(geometry.direction_matrix)
    return Reorientation(perm, flip, geometry, canonical_geometry(geometry, perm, flip))


def to_canonical(image: sitk.Image) -> tuple[np.ndarray, Reorientation]:
    """Array in canonical orientation (z,y,x) plus the transform that undoes it."""
    reo = reorientation_for(Geometry.of(image))
    # GetArrayFromImage copies: a view would dangle once the caller drops `image`
    return reo.array_to_canonical(sitk.GetArrayFromImage(image)), reo


def from_canonical(array: np.ndarray, reorientation: Reorientation) -> sitk.Image:
    """Image in the exact original grid from a canonical-orientation array."""
    original = reorientation.array_to_original(array)
    return reorientation.original.apply_to(sitk.GetImageFromArray(original))


def image_from_array(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """Image with `geometry` from a (z,y,x) array in that grid."""
    return geometry.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(array)))


# reading / writing ------------------------------------------------------------------------
def read_image(path: str | Path, *, check_finite: bool = True) -> sitk.Image:
    """Read a 3D scalar image and validate it; any problem raises a one-line ImageError."""
    p = Path(path)
    if not p.is_file():
        raise ImageError(p, "file not found")
    if image_suffix(p) is None:
        raise ImageError(p, f"unsupported file type (expected one of {', '.join(IMAGE_SUFFIXES)})")
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        first = next((ln for ln in str(exc).splitlines() if ln.strip().startswith(("Description", "ITK ERROR"))), "")
        detail = first.split(":", 1)[-1].strip() if first else "not a readable image"
        raise ImageError(p, f"corrupt or unreadable image ({detail})") from None
    validate_image(image, p, check_finite=check_finite)
    if p.name.lower().endswith(".nii.gz") and not _gzip_nifti_complete(p, image):
        # ITK's NIfTI reader zero-fills a truncated .gz stream instead of failing
        raise ImageError(p, "truncated or corrupt gzip stream (file incomplete?)")
    if check_finite and image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64) and p.name.lower().endswith((".nii", ".nii.gz")):
        bad = _nifti_nonfinite(p)
        if bad:  # ITK's NIfTI reader turns NaN into 0, so the array check above cannot see them
            raise ImageError(p, f"{bad} non-finite voxel values (NaN or inf)")
    return image


def _nifti_nonfinite(path: Path) -> int:
    """Non-finite voxels in a float NIfTI file, counted on the stored bytes."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        data = fh.read()
    for endian in "<>":
        if struct.unpack(f"{endian}i", data[:4])[0] == 348:
            dtype_code, offset = struct.unpack(f"{endian}h", data[70:72])[0], int(struct.unpack(f"{endian}f", data[108:112])[0])
            break
        if struct.unpack(f"{endian}i", data[:4])[0] == 540:
            dtype_code, offset = struct.unpack(f"{endian}h", data[12:14])[0], struct.unpack(f"{endian}q", data[168:176])[0]
            break
    else:
        return 0
    kind = {16: "f4", 64: "f8"}.get(dtype_code)
    if kind is None:
        return 0
    values = np.frombuffer(data, dtype=np.dtype(endian + kind), offset=offset)
    return int(values.size - np.count_nonzero(np.isfinite(values)))


def _gzip_nifti_complete(path: Path, image: sitk.Image) -> bool:
    """True if the gzip stream holds the whole NIfTI volume.

    Fast path: the gzip trailer's ISIZE equals header offset + voxel bytes. Otherwise (or for
    multi-member streams) decompress fully, which verifies every member's CRC.
    """
    try:
        with gzip.open(path, "rb") as fh:
            head = fh.read(348)
        with open(path, "rb") as fh:
            fh.seek(-4, 2)
            isize = struct.unpack("<I", fh.read(4))[0]
        for endian in "<>":
            sizeof_hdr = struct.unpack(f"{endian}i", head[:4])[0]
            if sizeof_hdr == 348:
                offset = int(struct.unpack(f"{endian}f", head[108:112])[0])
                break
            if sizeof_hdr == 540:
                offset = struct.unpack(f"{endian}q", head[168:176])[0]
                break
        else:
            return False
        nbytes = image.GetNumberOfPixels() * image.GetSizeOfPixelComponent()
        if (offset + nbytes) % (1 << 32) == isize:
            return True
    except (OSError, EOFError, struct.error):
        return False
    return _gzip_stream_complete(path)


def _gzip_stream_complete(path: Path) -> bool:
    decomp = zlib.decompressobj(wbits=31)
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                data = chunk
                while data:
                    decomp.decompress(data)
                    data = decomp.unused_data
                    if decomp.eof and data:  # next gzip member
                        decomp = zlib.decompressobj(wbits=31)
        return decomp.eof
    except zlib.error:
        return False


def validate_image(image: sitk.Image, path: str | Path, *, check_finite: bool = True) -> None:
    if image.GetDimension() != 3:
        raise ImageError(path, f"expected a 3D image, got {image.GetDimension()}D with size {image.GetSize()}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageError(path, f"expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per voxel")
    if min(image.GetSize()) < 1:
        raise ImageError(path, f"empty image of size {image.GetSize()}")
    spacing = np.asarray(image.GetSpacing())
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ImageError(path, f"invalid spacing {tuple(spacing)}")
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    if not np.all(np.isfinite(d)) or not np.allclose(d.T @ d, np.eye(3), atol=DIRECTION_TOLERANCE):
        raise ImageError(path, "direction matrix is not orthonormal")
    if check_finite and image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        array = sitk.GetArrayViewFromImage(image)
        if not np.isfinite(array).all():
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            raise ImageError(path, f"{bad} non-finite voxel values (NaN or inf)")


def write_image(image: sitk.Image, path: str | Path, *, compress: bool = True) -> Path:
    """Write atomically (temp name + rename) so readers never see a partial file.

    Outside NIfTI the reader's header fields (a NIfTI's `qto_xyz`, `intent_name`, ...) are
    dropped first: MetaImageIO cannot store them and prints a warning for each one, per case.
    A non-empty note (`ITK_FileNotes`, e.g. segpipe synth's marker) is a plain string and stays."""
    final = Path(path)
    suffix = image_suffix(final)
    if suffix is None or suffix in (".mhd", ".nhdr"):
        # detached headers name their data file, which a temp-name-and-rename would break
        raise ImageError(final, "unsupported output type (write .nii.gz, .nii, .mha or .nrrd)")
    keep = NOTE_KEY if image.HasMetaDataKey(NOTE_KEY) and image.GetMetaData(NOTE_KEY).strip() else None
    if suffix not in (".nii.gz", ".nii") and set(image.GetMetaDataKeys()) - {keep}:
        image = sitk.Image(image)
        image.MakeUnique()  # the dictionary is shared until then: the caller's image keeps its own
        for key in image.GetMetaDataKeys():
            if key != keep:
                image.EraseMetaData(key)
    with atomic_path(final) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
    return final
