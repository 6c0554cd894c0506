"""On-the-fly augmentation in torch, nnU-Net v2's set: rotation/zoom, Gaussian noise, Gaussian blur,
multiplicative brightness, contrast, simulated low resolution, gamma (plain and inverted), mirroring;
plus an optional additive/multiplicative intensity jitter of our own. Settings: config.AugmentSection.

Why our own code rather than batchgeneratorsv2 (nnU-Net's package): it pulls in fft-conv-pytorch and
batchgenerators v1 (scipy, scikit-image, scikit-learn, pandas...) for ~150 lines of torch, and it draws
from numpy's and torch's global RNGs, which breaks the contract below; MONAI's transforms keep their
own per-instance RNG state, which breaks it too. Semantics follow batchgeneratorsv2 as nnU-Net v2
configures it (factors below/above 1 with even odds, gamma with retained stats, nearest-down /
linear-up low resolution, the noise "variance" used as a standard deviation).

Every random draw comes from the `torch.Generator` passed in, seeded by the caller from
(seed, epoch, step, slot), so augmentations differ every epoch, never get cached (CSSN's
`itertools.cycle` froze them and grew memory) and are identical after a resume. A transform that
is switched off (probability 0) draws nothing, so it does not shift the others' draws.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

# nnU-Net's ANISO_THRESHOLD: a patch this much flatter in z than in-plane is augmented "dummy 2D"
ANISO_THRESHOLD = 3.0


def _u(gen: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _factor(gen: torch.Generator, lo: float, hi: float) -> float:
    """A factor in [lo, hi], below and above 1 with even odds where the range straddles 1 (as nnU-Net's
    BGContrast), so (0.7, 1.5) brightens as often as it darkens."""
    if lo < 1 < hi:
        return _u(gen, lo, 1.0) if _u(gen) < 0.5 else _u(gen, 1.0, hi)
    return _u(gen, lo, hi)


def _rotation(ax: float, ay: float, az: float) -> torch.Tensor:
    """Rotation about the x, y and z axes in (x, y, z) coordinates."""
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]], dtype=torch.float64)
    ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=torch.float64)
    rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]], dtype=torch.float64)
    return rz @ ry @ rx


def spatial_transform(image: torch.Tensor, label: torch.Tensor | None, matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Resample about the volume centre with a 3×3 matrix in voxel units, (x, y, z) order.

    affine_grid works in normalised coordinates; conjugating with the half-sizes keeps the
    transform rigid in voxel space for non-cubic volumes.
    """
    z, y, x = image.shape[-3:]
    half = torch.diag(torch.tensor([x / 2, y / 2, z / 2], dtype=torch.float64))
    theta = torch.linalg.inv(half) @ matrix @ half
    theta = torch.cat([theta, torch.zeros(3, 1, dtype=torch.float64)], 1)[None].to(torch.float32)
    grid = F.affine_grid(theta, [1, 1, z, y, x], align_corners=False)
    img = F.grid_sample(image[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    return img, (_nearest(label, grid[0]) if label is not None else None)


def _nearest(label: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """grid_sample(mode="nearest", padding_mode="border", align_corners=False) of an integer map, as an
    index gather: exact for any label value and a third cheaper than resampling a float copy."""
    z, y, x = label.shape
    idx = [(((grid[..., a] + 1) * n - 1) / 2).round().clamp_(0, n - 1).long() for a, n in enumerate((x, y, z))]
    return label.reshape(-1)[(idx[2] * y + idx[1]) * x + idx[0]]


def in_plane_only(cfg: Any, shape: tuple[int, ...]) -> bool:
    """Rotate about z only: configured, or ("auto") a patch flatter than ANISO_THRESHOLD, as nnU-Net
    decides from the patch shape (its proxy for strongly anisotropic spacing)."""
    if cfg.rotate_axes == "auto":
        z, y, x = shape[-3:]
        return max(z, y, x) / z > ANISO_THRESHOLD
    return cfg.rotate_axes == "in_plane"


def _spatial(image: torch.Tensor, label: torch.Tensor | None, gen: torch.Generator, cfg: Any,
             in_plane: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    deg = cfg.rotate_deg_in_plane if in_plane else cfg.rotate_deg
    lo, hi = cfg.scale_range
    rotate = deg > 0 and cfg.rotate_p > 0 and _u(gen) < cfg.rotate_p
    zoom = lo != hi and cfg.scale_p > 0 and _u(gen) < cfg.scale_p
    if not (rotate or zoom):
        return image, label
    r = math.radians(deg)
    if rotate and in_plane:
        angles = [0.0, 0.0, _u(gen, -r, r)]
    elif rotate:
        angles = [_u(gen, -r, r) for _ in range(3)]
    else:
        angles = [0.0, 0.0, 0.0]
    s = _u(gen, lo, hi) if zoom else 1.0
    # the grid samples input at M·p: a factor s > 1 samples further out, i.e. zooms out;
    # dummy 2D (in-plane) zooms x and y only
    scale = torch.diag(torch.tensor([s, s, 1.0 if in_plane else s], dtype=torch.float64))
    return spatial_transform(image, label, _rotation(*angles) @ scale)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(volume: torch.Tensor, sigmas: tuple[float, float, float]) -> torch.Tensor:
    """Separable Gaussian blur of one [Z,Y,X] volume, one sigma per axis (voxels), edges replicated."""
    out = volume[None, None]
    for axis, sigma in enumerate(sigmas):
        k = _gaussian_kernel(sigma)
        pad = [0] * 6
        pad[4 - 2 * axis] = pad[5 - 2 * axis] = k.numel() // 2  # F.pad lists the last axis first
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = k.numel()
        out = F.conv3d(F.pad(out, pad, mode="replicate"), k.view(shape))
    return out[0, 0]


def simulate_low_resolution(volume: torch.Tensor, factor: float, in_plane: bool) -> torch.Tensor:
    """Nearest downsampling of one [Z,Y,X] volume by `factor` (z kept when `in_plane`), linear back up."""
    size = volume.shape
    small = [max(1, round(n * factor)) for n in size]
    if in_plane:
        small[0] = size[0]
    down = F.interpolate(volume[None, None], size=small, mode="nearest-exact")
    return F.interpolate(down, size=tuple(size), mode="trilinear", align_corners=False)[0, 0]


def gamma_transform(volume: torch.Tensor, gamma: float, invert: bool) -> torch.Tensor:
    """Gamma on one volume rescaled to [0, 1], then its mean and std restored (nnU-Net's retain_stats);
    with `invert`, applied to the negated volume."""
    v = -volume if invert else volume
    mean, std = v.mean(), v.std()
    lo, hi = v.min(), v.max()
    span = (hi - lo).clamp(min=1e-7)
    out = ((v - lo) / span).pow(gamma) * span + lo
    out = (out - out.mean()) / (out.std() + 1e-8) * std + mean
    return -out if invert else out


def _per_channel(image: torch.Tensor, gen: torch.Generator, p_channel: float, fn) -> torch.Tensor:
    """Apply `fn(channel, gen)` to each channel with probability `p_channel` (draws in channel order)."""
    chans = list(image.unbind(0))
    for c in range(len(chans)):
        if p_channel >= 1 or _u(gen) < p_channel:
            chans[c] = fn(chans[c], gen)
    return torch.stack(chans)


def _hit(gen: torch.Generator, p: float) -> bool:
    return p > 0 and _u(gen) < p


def augment(image: torch.Tensor, label: torch.Tensor | None, gen: torch.Generator, cfg: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`image` [C,Z,Y,X] float, `label` [Z,Y,X] integer or None; `cfg` is an AugmentSection.

    nnU-Net's order: spatial, noise, blur, brightness, contrast, low resolution, inverted gamma,
    gamma, mirroring; our intensity jitter (if on) comes after the spatial step.
    """
    if not cfg.enabled:
        return image, label
    in_plane = in_plane_only(cfg, tuple(image.shape))
    image, label = _spatial(image, label, gen, cfg, in_plane)
    image = image.float()
    if _hit(gen, cfg.intensity_p):
        c = image.shape[0]
        scale = 1 + (torch.rand(c, generator=gen) * 2 - 1) * cfg.intensity_scale
        shift = (torch.rand(c, generator=gen) * 2 - 1) * cfg.intensity_shift
        image = image * scale[:, None, None, None] + shift[:, None, None, None]
    if cfg.noise_std > 0 and _hit(gen, cfg.noise_p):
        std = _u(gen, 0, cfg.noise_std)
        image = image + std * torch.randn(image.shape, generator=gen)
    if _hit(gen, cfg.blur_p):
        lo, hi = cfg.blur_sigma
        image = _per_channel(image, gen, cfg.blur_p_channel,
                             lambda v, g: gaussian_blur(v, tuple(_u(g, lo, hi) for _ in range(3))))
    if _hit(gen, cfg.brightness_p):
        image = _per_channel(image, gen, 1.0, lambda v, g: v * _factor(g, *cfg.brightness_range))

    def contrast(v: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        mean, lo, hi = v.mean(), v.min(), v.max()
        return ((v - mean) * _factor(g, *cfg.contrast_range) + mean).clamp(lo, hi)

    if _hit(gen, cfg.contrast_p):
        image = _per_channel(image, gen, 1.0, contrast)
    if _hit(gen, cfg.lowres_p):
        image = _per_channel(image, gen, cfg.lowres_p_channel,
                             lambda v, g: simulate_low_resolution(v, _u(g, *cfg.lowres_scale), in_plane))
    for p, invert in ((cfg.gamma_inverted_p, True), (cfg.gamma_p, False)):
        if _hit(gen, p):
            image = _per_channel(image, gen, 1.0,
                                 lambda v, g, inv=invert: gamma_transform(v, _factor(g, *cfg.gamma_range), inv))
    for axis in cfg.flip_axes:
        if _hit(gen, cfg.flip_p):
            image = torch.flip(image, (1 + axis,))
            label = torch.flip(label, (axis,)) if label is not None else None
    return image.contiguous(), (label.contiguous() if label is not None else None)
