"""Header orientations for synthetic images: the anatomy is generated in canonical LPS and
written through a permuted/flipped array with the matching direction, so that
pipeline.image_io.to_canonical gives back exactly the generated array.

lps       identity direction
ras       diag(-1, -1, 1): x and y stored reversed
permuted  a random non-trivial axis permutation with flips
oblique   the canonical grid itself rotated 10–25° about a non-trivial axis (the rotation
          stays in the header, so the canonical array is the lps one)
"""

from __future__ import annotations

import itertools

import numpy as np

from pipeline.image_io import Geometry, Reorientation, canonical_geometry, reorientation_for
from pipeline.synth.noise import axis_angle

ORIENTATIONS = ("lps", "ras", "permuted", "oblique")


def choose_orientation(orientation: str, rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[bool, bool, bool], np.ndarray]:
    """(perm, flip, rotation) for one case: perm/flip as in image_io.Reorientation."""
    if orientation == "lps":
        return (0, 1, 2), (False, False, False), np.eye(3)
    if orientation == "ras":
        return (0, 1, 2), (True, True, False), np.eye(3)
    if orientation == "permuted":
        options = [(p, f) for p in itertools.permutations(range(3)) for f in itertools.product((False, True), repeat=3)
                   if p != (0, 1, 2)]
        perm, flip = options[int(rng.integers(len(options)))]
        return perm, flip, np.eye(3)  # type: ignore[return-value]
    if orientation == "oblique":
        while True:
            axis = rng.normal(size=3)
            axis /= np.linalg.norm(axis)
            if np.min(np.abs(axis)) > 0.25:  # not close to any image axis or plane
                break
        angle = np.deg2rad(rng.uniform(10, 25)) * rng.choice([-1.0, 1.0])
        return (0, 1, 2), (False, False, False), axis_angle(axis, angle)
    raise ValueError(f"unknown orientation {orientation!r}; choose one of {', '.join(ORIENTATIONS)}")


def rotate_about_centre(geometry: Geometry, rotation: np.ndarray) -> Geometry:
    """`geometry` with its direction rotated, keeping the physical centre of the grid in place."""
    if np.allclose(rotation, np.eye(3)):
        return geometry
    d = geometry.direction_matrix
    half = (np.asarray(geometry.size) - 1) * np.asarray(geometry.spacing) / 2
    centre = np.asarray(geometry.origin) + d @ half
    new_d = rotation @ d
    origin = centre - new_d @ half
    return Geometry(geometry.size, geometry.spacing, tuple(float(v) for v in origin), tuple(float(v) for v in new_d.ravel()))  # type: ignore[arg-type]


def written_geometry(canonical: Geometry, perm: tuple[int, int, int], flip: tuple[bool, bool, bool]) -> Geometry:
    """The stored grid whose canonical form (image_io.canonical_geometry) is `canonical`."""
    dc = canonical.direction_matrix
    size, spacing = [0, 0, 0], [0.0, 0.0, 0.0]
    d = np.zeros((3, 3))
    for i in range(3):
        j = perm[i]
        size[j] = canonical.size[i]
        spacing[j] = canonical.spacing[i]
        d[:, j] = (-1.0 if flip[i] else 1.0) * dc[:, i]
    corner = np.zeros(3)
    for i in range(3):
        if flip[i]:
            corner[perm[i]] = size[perm[i]] - 1
    origin = np.asarray(canonical.origin) - d @ (corner * np.asarray(spacing))
    return Geometry(tuple(size), tuple(spacing), tuple(float(v) for v in origin), tuple(float(v) for v in d.ravel()))  # type: ignore[arg-type]


def reorientation_to(canonical: Geometry, orientation: str, rng: np.random.Generator) -> Reorientation:
    """Reorientation whose `original` is the grid to write and whose canonical grid is `canonical` (rotated if oblique)."""
    perm, flip, rotation = choose_orientation(orientation, rng)
    target = rotate_about_centre(canonical, rotation)
    original = written_geometry(target, perm, flip)
    reo = reorientation_for(original)
    if reo.perm != perm or reo.flip != flip:  # pragma: no cover - guarded by the tests
        raise AssertionError(f"orientation {orientation}: header resolves to {reo.perm}/{reo.flip}, wanted {perm}/{flip}")
    expected = canonical_geometry(original, perm, flip)
    if expected.differences(target, tol=1e-6):  # pragma: no cover
        raise AssertionError(f"orientation {orientation}: {expected.differences(target)}")
    return reo
