"""Network evaluation on a grid of any size: one pass when it fits the patch, else a
Gaussian-weighted sliding window (nnU-Net: σ = patch/8, step = patch·(1 − overlap)); optional
mirror test-time augmentation. Everything stays on the tensor's device.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

Forward = Callable[[torch.Tensor], torch.Tensor]


@lru_cache(maxsize=8)
def _gaussian_np(patch: tuple[int, int, int], sigma_scale: float) -> np.ndarray:
    grids = []
    for n in patch:
        sigma = max(n * sigma_scale, 1e-3)
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2
        grids.append(np.exp(-0.5 * (x / sigma) ** 2))
    g = grids[0][:, None, None] * grids[1][None, :, None] * grids[2][None, None, :]
    g /= g.max()
    # no zero weights at the border: every voxel must get a defined average
    return np.maximum(g, g[g > 0].min()).astype(np.float32)


def gaussian_importance(patch: Sequence[int], device: torch.device, sigma_scale: float = 1 / 8) -> torch.Tensor:
    return torch.from_numpy(_gaussian_np(tuple(int(p) for p in patch), float(sigma_scale))).to(device)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start offsets covering [0, size) with windows of `patch`, about `overlap` apart, ends flush."""
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1.0 - overlap)))
    n = math.ceil((size - patch) / step) + 1
    if n == 1:
        return [0]
    actual = (size - patch) / (n - 1)
    return [round(i * actual) for i in range(n)]


def pad_to(x: torch.Tensor, shape: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the last 3 axes (symmetrically) to at least `shape`; the slices undo it."""
    pads, crop = [], []
    for a in range(3):
        n = x.shape[-3 + a]
        total = max(0, int(shape[a]) - n)
        lo = total // 2
        pads.append((lo, total - lo))
        crop.append(slice(lo, lo + n))
    if any(p != (0, 0) for p in pads):
        flat = [v for p in reversed(pads) for v in p]
        x = F.pad(x, flat)
    return x, tuple(crop)


def _mirrored(forward: Forward, x: torch.Tensor, mirror_axes: Sequence[int]) -> torch.Tensor:
    """Mean logits over every subset of flips of `mirror_axes` (spatial axes 0=z, 1=y, 2=x)."""
    out = forward(x).float()
    if not mirror_axes:
        return out
    count = 1
    dims = [2 + int(a) for a in mirror_axes]
    for r in range(1, len(dims) + 1):
        for combo in itertools.combinations(dims, r):
            out += torch.flip(forward(torch.flip(x, combo)).float(), combo)
            count += 1
    return out / count


def model_divisor(model_cfg: dict[str, Any]) -> tuple[int, int, int]:
    """What a network's input size must be a multiple of on each axis: the product of its strides."""
    strides = model_cfg.get("strides") or [2] * (len(model_cfg["channels"]) - 1)
    out = [1, 1, 1]
    for s in strides:
        s3 = [s] * 3 if isinstance(s, int) else list(s)
        out = [out[a] * int(s3[a]) for a in range(3)]
    return tuple(out)  # type: ignore[return-value]


def one_pass(size: Sequence[int], patch: Sequence[int], window: str = "auto") -> bool:
    """Whether `predict_grid` evaluates a grid of `size` in one pass (else sliding windows of `patch`)."""
    if window not in ("auto", "whole", "sliding"):
        raise ValueError(f"unknown window mode {window!r} (auto, whole, sliding)")
    return window == "whole" or (window == "auto" and all(int(s) <= int(p) for s, p in zip(size, patch, strict=True)))


def padded_to(size: Sequence[int], divisor: Sequence[int]) -> list[int]:
    """`size` rounded up to a multiple of `divisor` on each axis: the shape of a one-pass input."""
    return [math.ceil(int(s) / int(d)) * int(d) for s, d in zip(size, divisor, strict=True)]


def predict_grid(forward: Forward, x: torch.Tensor, num_classes: int, patch: Sequence[int], *,
                 divisor: Sequence[int] = (16, 16, 16), overlap: float = 0.5,
                 mirror_axes: Sequence[int] = (), window: str = "auto", window_batch: int = 1) -> torch.Tensor:
    """Logits [K, Z, Y, X] (float32, on x's device) for x [1, C, Z, Y, X].

    window "auto": one pass when the grid fits `patch` (padded up to a multiple of `divisor`),
    else the Gaussian sliding window; "whole" forces one pass, "sliding" forces windows.
    `window_batch` windows go through `forward` together, as a batch (MONAI's sw_batch_size):
    fewer, larger passes that keep a GPU busy; 1 evaluates them one by one.
    """
    if window_batch < 1:
        raise ValueError(f"window_batch must be at least 1, got {window_batch}")
    size = x.shape[-3:]
    if one_pass(size, patch, window):
        xp, crop = pad_to(x, padded_to(size, divisor))
        return _mirrored(forward, xp, mirror_axes)[0][(slice(None), *crop)]
    patch = [int(p) for p in patch]
    xp, crop = pad_to(x, patch)
    full = xp.shape[-3:]
    weight = gaussian_importance(patch, x.device)
    logits = torch.zeros((num_classes, *full), dtype=torch.float32, device=x.device)
    norm = torch.zeros(tuple(full), dtype=torch.float32, device=x.device)
    starts = [window_starts(int(full[a]), patch[a], overlap) for a in range(3)]
    windows = [tuple(slice(s, s + patch[a]) for a, s in enumerate(corner)) for corner in itertools.product(*starts)]
    for first in range(0, len(windows), window_batch):
        group = windows[first:first + window_batch]
        tiles = [xp[(slice(None), slice(None), *sl)] for sl in group]
        out = _mirrored(forward, tiles[0] if len(tiles) == 1 else torch.cat(tiles), mirror_axes)
        for i, sl in enumerate(group):
            logits[(slice(None), *sl)] += out[i] * weight
            norm[sl] += weight
    logits /= norm
    return logits[(slice(None), *crop)]
