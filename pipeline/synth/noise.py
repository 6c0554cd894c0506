"""Seeded randomness for synthetic data: per-case seeds, smooth fields, surface wobble.

All randomness flows from explicit integer seeds through numpy's PCG64, so the same seed
gives byte-identical arrays on any machine with the same numpy. Smooth fields are sums of
separable cosines: they cost a few broadcast operations instead of a 3D filter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROLE_CODES = {"train": 1, "unlabeled": 2, "validation": 3, "orientation": 4, "missing": 5}


def case_seed(seed: int, role: str, index: int) -> int:
    """A 63-bit seed for case `index` of `role`, independent of every other case."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, ROLE_CODES[role], int(index)]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


def rng_for(seed: int, *stream: int) -> np.random.Generator:
    """Independent generator for one purpose (`stream`) of one case."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *stream]))


@dataclass(frozen=True)
class Wobble:
    """Low-order surface perturbation: Σ amp·sin(ω·q + φ) in a shape's unit coordinates."""

    omega: np.ndarray  # (K, 3)
    phase: np.ndarray  # (K,)
    amp: np.ndarray  # (K,)

    @property
    def bound(self) -> float:
        return float(np.abs(self.amp).sum())

    def __call__(self, q0: np.ndarray, q1: np.ndarray, q2: np.ndarray) -> np.ndarray | float:
        out: np.ndarray | float = 0.0
        for (w0, w1, w2), ph, a in zip(self.omega, self.phase, self.amp, strict=True):
            out = out + np.float32(a) * np.sin(np.float32(w0) * q0 + np.float32(w1) * q1 + np.float32(w2) * q2 + np.float32(ph))
        return out


def wobble(rng: np.random.Generator, amp: float = 0.08, terms: int = 3, freq: tuple[float, float] = (1.5, 3.5)) -> Wobble:
    """Random lobes of total amplitude about `amp` (fraction of the radius)."""
    direction = rng.normal(size=(terms, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    omega = direction * rng.uniform(*freq, size=(terms, 1))
    a = rng.uniform(0.5, 1.0, size=terms)
    a *= amp / a.sum()
    return Wobble(omega, rng.uniform(0, 2 * np.pi, size=terms), a)


def no_wobble() -> Wobble:
    return Wobble(np.zeros((0, 3)), np.zeros(0), np.zeros(0))


def cosine_field(
    rng: np.random.Generator,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    *,
    wavelength: tuple[float, float],
    terms: int = 3,
) -> np.ndarray:
    """Smooth random field of unit-ish amplitude on broadcastable coordinate arrays (mm)."""
    out = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), dtype=np.float32)
    for _ in range(terms):
        k = 2 * np.pi / rng.uniform(*wavelength, size=3)
        ph = rng.uniform(0, 2 * np.pi, size=3)
        term = np.cos(np.float32(k[0]) * x + np.float32(ph[0])) * np.cos(np.float32(k[1]) * y + np.float32(ph[1]))
        out += term * np.cos(np.float32(k[2]) * z + np.float32(ph[2]))
    out *= np.float32(1.0 / np.sqrt(terms / 8.0))  # a product of three cosines has variance 1/8
    return out


def random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """Rotation about a random axis by up to `max_deg` degrees."""
    return axis_angle(rng.normal(size=3), np.deg2rad(rng.uniform(-max_deg, max_deg)))


def axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation matrix (columns are the rotated axes)."""
    k = np.asarray(axis, dtype=np.float64)
    k = k / np.linalg.norm(k)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx
