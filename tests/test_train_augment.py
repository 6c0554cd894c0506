"""nnU-Net v2's augmentation set in pipeline/training/augment.py: references (torch's grid_sample,
scipy's Gaussian filter), the statistics each transform must keep, seeding, and anisotropic rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from pipeline.config import AugmentSection
from pipeline.training import augment as A

OFF = dict(flip_axes=[], rotate_p=0.0, scale_p=0.0, intensity_p=0.0, noise_p=0.0, blur_p=0.0, brightness_p=0.0,
           contrast_p=0.0, lowres_p=0.0, gamma_inverted_p=0.0, gamma_p=0.0)


def _cfg(**kw) -> AugmentSection:
    return AugmentSection.model_validate({**OFF, **kw})


def test_label_resampling_equals_grid_sample_nearest() -> None:
    g = torch.Generator().manual_seed(0)
    lab = torch.randint(0, 14, (9, 14, 17), generator=g, dtype=torch.uint8)
    img = torch.randn(1, 9, 14, 17, generator=g)
    for angles, s in (((0.3, -0.2, 0.5), 1.3), ((0.0, 0.0, 2.5), 0.7), ((0.1, 0.4, -0.3), 1.0)):
        m = A._rotation(*angles) * s
        _, got = A.spatial_transform(img, lab, m)
        z, y, x = lab.shape
        half = torch.diag(torch.tensor([x / 2, y / 2, z / 2], dtype=torch.float64))
        theta = torch.cat([torch.linalg.inv(half) @ m @ half, torch.zeros(3, 1, dtype=torch.float64)], 1)
        grid = F.affine_grid(theta[None].float(), [1, 1, z, y, x], align_corners=False)
        ref = F.grid_sample(lab[None, None].float(), grid, mode="nearest", padding_mode="border", align_corners=False)
        assert torch.equal(got, ref[0, 0].to(torch.uint8))


def test_every_transform_on_is_seeded_and_changes_with_the_seed() -> None:
    g = torch.Generator().manual_seed(1)
    img = torch.randn(2, 12, 20, 24, generator=g)
    lab = torch.randint(0, 4, (12, 20, 24), generator=g, dtype=torch.uint8)
    cfg = AugmentSection(flip_axes=[0, 1], rotate_p=1, scale_p=1, scale=(0.7, 1.4), noise_p=1, blur_p=1,
                         brightness_p=1, contrast_p=1, lowres_p=1, gamma_inverted_p=1, gamma_p=1)
    a = A.augment(img, lab, torch.Generator().manual_seed(7), cfg)
    b = A.augment(img, lab, torch.Generator().manual_seed(7), cfg)
    c = A.augment(img, lab, torch.Generator().manual_seed(8), cfg)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == img.shape and a[0].dtype == torch.float32 and a[1].dtype == torch.uint8
    assert torch.isfinite(a[0]).all()


def test_noise_standard_deviation_is_drawn_up_to_noise_std() -> None:
    # nnU-Net's "noise_variance" (0, 0.1) reaches np.random.normal as the std: at most 0.1, not sqrt(0.1)
    zeros = torch.zeros(1, 16, 32, 32)
    stds = [float(A.augment(zeros, None, torch.Generator().manual_seed(s), _cfg(noise_p=1.0))[0].std())
            for s in range(60)]
    assert max(stds) < 0.102 and min(stds) < 0.02 and 0.035 < float(np.mean(stds)) < 0.065


def test_gaussian_blur_matches_scipy() -> None:
    vol = torch.randn(10, 13, 15, generator=torch.Generator().manual_seed(2))
    sig = (1.0, 0.5, 0.8)
    ref = gaussian_filter(vol.double().numpy(), sig, mode="nearest", radius=[3, 2, 3])
    np.testing.assert_allclose(A.gaussian_blur(vol, sig).numpy(), ref, atol=1e-5)


def test_factors_fall_below_and_above_one_with_even_odds() -> None:
    g = torch.Generator().manual_seed(3)
    f = np.array([A._factor(g, 0.7, 1.5) for _ in range(2000)])
    assert f.min() >= 0.7 and f.max() <= 1.5
    assert 0.45 < (f < 1).mean() < 0.55  # uniform over (0.7, 1.5) would give 0.375


def test_contrast_keeps_the_range_and_gamma_keeps_mean_and_std() -> None:
    g = torch.Generator().manual_seed(4)
    img = torch.randn(1, 8, 16, 16, generator=g) * 2 + 1
    for seed in range(10):
        out = A.augment(img, None, torch.Generator().manual_seed(seed), _cfg(contrast_p=1.0))[0]
        assert float(out.min()) >= float(img.min()) - 1e-6 and float(out.max()) <= float(img.max()) + 1e-6
    v = img[0]
    for invert in (False, True):
        out = A.gamma_transform(v, 1.4, invert)
        assert float(out.mean()) == pytest.approx(float(v.mean()), abs=1e-4)
        assert float(out.std()) == pytest.approx(float(v.std()), rel=1e-4)
        # a gamma is monotonic: the voxels' order is unchanged, only the spacing of values
        assert torch.equal(torch.argsort(out.flatten()), torch.argsort(v.flatten()))
        assert not torch.allclose(out, v, atol=1e-3)
    # gamma > 1 pushes mid-range values down; on the inverted image it pushes them up
    skew = [float((A.gamma_transform(v, 1.4, inv) - v).median()) for inv in (False, True)]
    assert skew[0] * skew[1] < 0
    assert torch.allclose(A.gamma_transform(v, 1.0, False), v, atol=1e-5)


def test_brightness_multiplies_each_channel() -> None:
    img = torch.ones(2, 4, 6, 6)
    out = A.augment(img, None, torch.Generator().manual_seed(5), _cfg(brightness_p=1.0))[0]
    per_channel = out.flatten(1)
    assert torch.equal(per_channel.min(1).values, per_channel.max(1).values)  # one factor per channel
    assert ((per_channel[:, 0] >= 0.75) & (per_channel[:, 0] <= 1.25)).all()


def test_low_resolution_blocks_the_image_and_spares_z_in_plane() -> None:
    g = torch.Generator().manual_seed(6)
    vol = torch.randn(16, 32, 32, generator=g)
    assert torch.allclose(A.simulate_low_resolution(vol, 1.0, False), vol)
    low = A.simulate_low_resolution(vol, 0.5, False)
    rough = lambda v: float((v[:, :, 1:] - v[:, :, :-1]).abs().mean())  # noqa: E731
    assert rough(low) < 0.7 * rough(vol)
    z_ramp = torch.arange(16.0)[:, None, None].expand(16, 32, 32).contiguous()
    assert torch.allclose(A.simulate_low_resolution(z_ramp, 0.5, True), z_ramp)
    assert not torch.allclose(A.simulate_low_resolution(z_ramp, 0.5, False), z_ramp)


def test_flat_patches_rotate_and_zoom_in_plane_only() -> None:
    assert A.in_plane_only(_cfg(rotate_axes="auto"), (1, 16, 64, 64))  # 64 / 16 > 3: nnU-Net's dummy 2D
    assert not A.in_plane_only(_cfg(rotate_axes="auto"), (1, 32, 64, 64))
    assert not A.in_plane_only(_cfg(), (1, 16, 64, 64))  # the default rotates about every axis
    assert A.in_plane_only(_cfg(rotate_axes="in_plane"), (1, 32, 64, 64))
    assert not A.in_plane_only(_cfg(rotate_axes="all"), (1, 8, 64, 64))
    # a volume that only varies along z is unchanged by rotations about z and in-plane zooms
    z_ramp = torch.arange(8.0)[None, :, None, None].expand(1, 8, 40, 40).contiguous()
    lab = torch.arange(8, dtype=torch.uint8)[:, None, None].expand(8, 40, 40).contiguous()
    spatial = dict(rotate_p=1.0, scale_p=1.0, scale=(0.7, 1.4), rotate_deg=30)
    for seed in range(5):  # 40 / 8 > 3: in-plane only under "auto"
        im, la = A.augment(z_ramp, lab, torch.Generator().manual_seed(seed), _cfg(rotate_axes="auto", **spatial))
        assert torch.allclose(im, z_ramp, atol=1e-4) and torch.equal(la, lab)
    moved = A.augment(z_ramp, lab, torch.Generator().manual_seed(0), _cfg(rotate_axes="all", **spatial))
    assert not torch.equal(moved[1], lab)


def test_mirroring_only_on_configured_axes() -> None:
    img = torch.randn(1, 4, 5, 6, generator=torch.Generator().manual_seed(9))
    lab = torch.arange(120, dtype=torch.uint8).reshape(4, 5, 6)
    flips = set()
    for seed in range(20):
        im, la = A.augment(img, lab, torch.Generator().manual_seed(seed), _cfg(flip_axes=[0, 1]))
        corner = int(la[0, 0, 0])  # = 30·z + 6·y + x of the voxel that landed there
        assert corner % 6 == 0  # x never flipped
        done = tuple(a for a, flipped in ((0, corner // 30 == 3), (1, corner // 6 % 5 == 4)) if flipped)
        assert torch.equal(la, torch.flip(lab, done)) and torch.equal(im, torch.flip(img, [1 + a for a in done]))
        flips.add(done)
    assert flips == {(), (0,), (1,), (0, 1)}


def test_config_ranges_are_validated_and_flare_uses_the_benchmarked_augmentation() -> None:
    from pydantic import ValidationError

    from pipeline.config import load_config

    assert AugmentSection(scale=0.1).scale_range == pytest.approx((0.9, 1.1))
    assert AugmentSection(scale=(0.7, 1.4)).scale_range == (0.7, 1.4)
    for bad in (dict(scale=1.5), dict(scale=(1.4, 0.7)), dict(lowres_scale=(0.5, 1.5)), dict(gamma_range=(0, 1))):
        with pytest.raises(ValidationError):
            AugmentSection(**bad)
    aug = load_config("flare").train.augment
    assert 2 not in aug.flip_axes  # x flips would swap left/right organ labels
    # bench/train_vs_nnunet.py: nnU-Net's extra transforms cost 0.049 mean DSC at 3,000 iterations
    assert (aug.rotate_deg, aug.scale_range) == (10, pytest.approx((0.9, 1.1)))
    assert (aug.noise_p, aug.blur_p, aug.brightness_p, aug.contrast_p, aug.lowres_p, aug.gamma_inverted_p,
            aug.gamma_p) == (0, 0, 0, 0, 0, 0, 0)
