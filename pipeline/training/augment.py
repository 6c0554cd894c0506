"""On-the-fly augmentation in torch: flips, small rotations/zoom, intensity shift/scale, noise.

Every random draw comes from the `torch.Generator` passed in, seeded by the caller from
(seed, epoch, step, slot), so augmentations differ every epoch, never get cached (CSSN's
`itertools.cycle` froze them and grew memory) and are identical after a resume.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


def _u(gen: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


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
    lab = None
    if label is not None:
        lab = F.grid_sample(label[None, None].float(), grid, mode="nearest", padding_mode="border",
                            align_corners=False)[0, 0].round().to(label.dtype)
    return img, lab


def augment(image: torch.Tensor, label: torch.Tensor | None, gen: torch.Generator, cfg: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`image` [C,Z,Y,X] float, `label` [Z,Y,X] integer or None; `cfg` is an AugmentSection."""
    if not cfg.enabled:
        return image, label
    for axis in cfg.flip_axes:
        if _u(gen) < cfg.flip_p:
            image = torch.flip(image, (1 + axis,))
            label = torch.flip(label, (axis,)) if label is not None else None
    rotate = cfg.rotate_deg > 0 and _u(gen) < cfg.rotate_p
    zoom = cfg.scale > 0 and _u(gen) < cfg.scale_p
    if rotate or zoom:
        r = math.radians(cfg.rotate_deg)
        angles = [_u(gen, -r, r) for _ in range(3)] if rotate else [0.0, 0.0, 0.0]
        s = _u(gen, 1 - cfg.scale, 1 + cfg.scale) if zoom else 1.0
        # the grid samples input at M·p: a factor s > 1 samples further out, i.e. zooms out
        image, label = spatial_transform(image, label, _rotation(*angles) * s)
    if cfg.intensity_p > 0 and _u(gen) < cfg.intensity_p:
        c = image.shape[0]
        scale = 1 + (torch.rand(c, generator=gen) * 2 - 1) * cfg.intensity_scale
        shift = (torch.rand(c, generator=gen) * 2 - 1) * cfg.intensity_shift
        image = image * scale[:, None, None, None] + shift[:, None, None, None]
    if cfg.noise_std > 0:
        std = _u(gen, 0, cfg.noise_std)
        image = image + std * torch.randn(image.shape, generator=gen)
    return image.contiguous(), (label.contiguous() if label is not None else None)
