"""Training engine pieces: losses against references, schedules, AMP policy, augmentation,
seeded data plans, TensorBoard files, checkpoints, and a small end-to-end training run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.training.losses import IGNORE, cross_entropy, focal_loss, soft_dice_loss, supervised_loss


def test_dice_matches_a_numpy_reference_and_respects_ignore() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, 6, generator=g)
    target = torch.randint(0, 3, (2, 4, 5, 6), generator=g)
    p = torch.softmax(logits, 1).numpy()
    oh = np.eye(3)[target.numpy()].transpose(0, 4, 1, 2, 3)
    ref = 1 - np.mean([(2 * (p[b, c] * oh[b, c]).sum() + 1e-5) / (p[b, c].sum() + oh[b, c].sum() + 1e-5)
                       for b in range(2) for c in (1, 2)])
    assert float(soft_dice_loss(logits, target)) == pytest.approx(ref, rel=1e-5)
    # ignored voxels: whatever the logits there, the loss is unchanged
    t2 = target.clone()
    t2[:, :2] = IGNORE
    l2 = logits.clone()
    l2[:, :, :2] = torch.randn(2, 3, 2, 5, 6) * 10
    for fn in (soft_dice_loss, cross_entropy, focal_loss):
        assert float(fn(logits, t2)) == pytest.approx(float(fn(l2, t2)), rel=1e-6)
    assert float(cross_entropy(logits, target)) == pytest.approx(float(F.cross_entropy(logits, target)), rel=1e-6)
    assert float(focal_loss(logits, target)) < float(cross_entropy(logits, target))
    assert float(focal_loss(logits, target, gamma=0)) == pytest.approx(float(cross_entropy(logits, target)), rel=1e-6)


def test_supervised_loss_masks_unlabeled_samples_and_deep_supervision() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 3, 4, 4, 4, generator=g, requires_grad=True)
    target = torch.randint(0, 3, (3, 4, 4, 4), generator=g)
    has = torch.tensor([True, False, True])
    masked = supervised_loss(logits, target, has)
    assert float(masked.detach()) == pytest.approx(float(supervised_loss(logits[[0, 2]], target[[0, 2]])))
    masked.backward()
    assert logits.grad[1].abs().sum() == 0
    zero = supervised_loss(logits, target, torch.tensor([False] * 3))
    assert float(zero) == 0 and zero.requires_grad
    half = torch.randn(3, 3, 2, 2, 2)
    quarter = torch.randn(3, 3, 1, 1, 1, requires_grad=True)
    ds = supervised_loss([logits, half, quarter], target)
    t_half = F.interpolate(target[:, None].float(), size=(2, 2, 2), mode="nearest")[:, 0].long()
    # nnU-Net: 1, ½, (¼ → 0 for the lowest output), normalised
    expect = (2 / 3) * supervised_loss(logits, target) + (1 / 3) * supervised_loss(half, t_half)
    assert float(ds) == pytest.approx(float(expect), rel=1e-6)
    ds.backward()
    assert quarter.grad is not None and quarter.grad.abs().sum() == 0  # in the graph (DDP), not scored
    assert float(supervised_loss(torch.randn(1, 3, 4, 4, 4), target[:1], kind="dice_focal")) > 0


def test_lr_schedules() -> None:
    from pipeline.training.optim import lr_factor

    assert lr_factor(0, 100, warmup_steps=10) == pytest.approx(0.1)
    assert lr_factor(9, 100, warmup_steps=10) == pytest.approx(1.0)
    assert lr_factor(10, 100, warmup_steps=10) == pytest.approx(1.0)
    assert lr_factor(55, 100, warmup_steps=10) == pytest.approx(0.5**0.9)
    assert lr_factor(100, 100) == 0.0
    steps = [lr_factor(s, 100, schedule="step") for s in (0, 65, 66, 85, 86, 99)]
    assert steps == [1.0, 1.0, 0.1, 0.1, 0.05, 0.05]  # CSSN's 66 % / 86 % milestones


def test_amp_policy_on_cpu() -> None:
    from pipeline.training.amp import amp_policy

    p = amp_policy(torch.device("cpu"), "auto")
    assert p.dtype is None and p.scaler is None and p.name == "fp32"
    with pytest.raises(ValueError, match="CUDA"):
        amp_policy(torch.device("cpu"), "fp16")


def _aug_cfg(**kw):
    from pipeline.config import AugmentSection

    return AugmentSection.model_validate(kw)


def test_augmentation_is_seeded_and_keeps_image_and_label_aligned() -> None:
    from pipeline.training.augment import augment

    lab = torch.zeros(16, 20, 24, dtype=torch.uint8)
    lab[4:12, 5:15, 6:18] = 1
    lab[6:10, 8:12, 14:18] = 2
    img = lab.float()[None] * 10
    no_intensity = dict(intensity_p=0.0, noise_p=0.0, blur_p=0.0, brightness_p=0.0, contrast_p=0.0, lowres_p=0.0,
                        gamma_inverted_p=0.0, gamma_p=0.0)
    cfg = _aug_cfg(flip_axes=[0, 1, 2], rotate_p=1.0, scale_p=1.0, rotate_deg=15, **no_intensity)
    a = augment(img, lab, torch.Generator().manual_seed(5), cfg)
    b = augment(img, lab, torch.Generator().manual_seed(5), cfg)
    c = augment(img, lab, torch.Generator().manual_seed(6), cfg)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    for out_img, out_lab in (a, c):
        agree = ((out_img[0] / 10).round().clamp(0, 2).to(torch.uint8) == out_lab).float().mean()
        assert agree > 0.95
        assert 0.5 < (out_lab == 1).sum() / (lab == 1).sum() < 1.5
    im2, lab2 = augment(img, None, torch.Generator().manual_seed(1), _aug_cfg(intensity_p=1.0, rotate_p=0, scale_p=0))
    assert lab2 is None and not torch.equal(im2, img)
    assert augment(img, lab, torch.Generator(), _aug_cfg(enabled=False))[0] is img


def test_epoch_plans_are_seeded_and_shard_disjointly() -> None:
    from pipeline.training.data import epoch_plan, rank_slice

    ids = [f"c{i}" for i in range(5)]
    p1, p2 = epoch_plan(ids, 12, 0, 3, "labeled"), epoch_plan(ids, 12, 0, 3, "labeled")
    assert p1 == p2 and len(p1) == 12 and sorted(c for c, _ in p1[:5]) == ids
    assert p1 != epoch_plan(ids, 12, 0, 4, "labeled")
    r0, r1 = rank_slice(p1, 0, 2, 3), rank_slice(p1, 1, 2, 3)
    assert len(r0) == len(r1) == 6 and not {s for _, s in r0} & {s for _, s in r1}
    assert epoch_plan([], 4, 0, 0, "u") == []


def test_crop_pads_with_minimum_and_oversamples_foreground() -> None:
    from pipeline.training.data import crop_or_pad

    img = np.full((1, 4, 30, 30), 5.0, np.float32)
    img[0, 0] = -3.0  # the crop's minimum (z is shorter than the patch, so plane 0 is in every crop)
    lab = np.zeros((4, 30, 30), np.uint8)
    lab[1:3, 25:28, 25:28] = 1
    hits = 0
    for s in range(20):
        im, la = crop_or_pad(img, lab, (6, 8, 8), torch.Generator().manual_seed(s), fg_p=1.0)
        assert im.shape == (1, 6, 8, 8) and la.shape == (6, 8, 8)
        assert float(im[0, 5].max()) == -3.0  # padded rows take the channel minimum
        assert int(la[4:].max()) == 0
        hits += int(la.max() == 1)
    assert hits == 20


def test_tensorboard_events_decode(tmp_path) -> None:
    from pipeline.training.tb import ScalarWriter, crc32c, read_scalars

    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    w = ScalarWriter(tmp_path)
    w.add(1, {"train/loss": 0.5, "val/dice": 0.25})
    w.add(2, {"train/loss": 0.125})
    w.close()
    assert read_scalars(w.path) == [(1, "train/loss", 0.5), (1, "val/dice", 0.25), (2, "train/loss", 0.125)]


def test_tensorboard_reads_our_event_files(tmp_path) -> None:
    """TensorBoard's own reader (dev-only oracle) loads what ScalarWriter wrote: the file version
    record, every scalar with its step, and nothing else."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    from pipeline.training.tb import ScalarWriter

    w = ScalarWriter(tmp_path)
    w.add(1, {"train/loss": 0.5, "val/dice_net0": 0.25})
    w.add(2, {"train/loss": 0.125, "train/method/kl": 3.0})
    w.close()
    events = list(EventFileLoader(str(w.path)).Load())
    assert events[0].file_version == "brain.Event:2" and len(events) == 3
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["train/loss", "train/method/kl", "val/dice_net0"]
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 0.5), (2, 0.125)]
    assert [(e.step, e.value) for e in acc.Scalars("val/dice_net0")] == [(1, 0.25)]
    assert [(e.step, e.value) for e in acc.Scalars("train/method/kl")] == [(2, 3.0)]
    # TensorBoard checks our CRCs: a flipped bit in the last record's data drops that record
    data = bytearray(w.path.read_bytes())
    data[-6] ^= 0x01
    w.path.write_bytes(bytes(data))
    assert [e.step for e in EventFileLoader(str(w.path)).Load()] == [0, 1]


def test_checkpoint_round_trip_is_atomic_and_pruned(tmp_path) -> None:
    from pipeline.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    net = torch.nn.Conv3d(1, 2, 3)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.randn(1, 1, 4, 4, 4)).sum().backward()
    opt.step()
    for e in (1, 2, 3):
        save_checkpoint(tmp_path, e, net, opt, None, {"note": e}, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_0002", "epoch_0003", "last.json"]
    (tmp_path / "checkpoints" / ".epoch_0004.tmp-1").mkdir()  # a kill mid-write leaves only a temp dir
    ck = latest_checkpoint(tmp_path)
    assert ck.name == "epoch_0003"
    net2 = torch.nn.Conv3d(1, 2, 3)
    opt2 = torch.optim.AdamW(net2.parameters(), lr=1e-3)
    state = load_checkpoint(ck, net2, opt2, None, torch.device("cpu"))
    assert state == {"note": 3, "epoch": 3}
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values(), strict=True))
    s1, s2 = opt.state_dict()["state"][0], opt2.state_dict()["state"][0]
    assert torch.equal(s1["exp_avg"], s2["exp_avg"])
    assert not list(tmp_path.glob("checkpoints/epoch_0003/*.pkl"))


def test_supervised_training_learns_and_writes_outputs(tmp_path) -> None:
    from train_helpers import coarse_spec, make_config, make_source

    from pipeline.training.export import export_stage, load_stage
    from pipeline.training.tb import read_scalars
    from pipeline.training.trainer import train_stage

    cfg = make_config(epochs=6, channels_last=True)
    spec = coarse_spec(cfg)
    spec.train.lr = 1e-2
    source = make_source(n_train=4, n_val=2, n_unl=0)
    summary = train_stage(spec, source, cfg.train, tmp_path / "train" / "coarse")
    out = tmp_path / "train" / "coarse"
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert len(metrics) == 6 and metrics[-1]["loss"] < metrics[0]["loss"]
    assert summary["best_dice"] is not None and summary["best_dice"] > 0.3
    assert math.isclose(json.loads((out / "best.json").read_text())["val_dice"], summary["best_dice"])
    tags = {t for _, t, _ in read_scalars(next((out / "tensorboard").iterdir()))}
    assert {"train/loss", "train/lr", "val/dice_net0"} <= tags
    w, _ = export_stage(tmp_path, "coarse", tmp_path / "weights")
    model, info = load_stage(w)
    assert info["stage"] == "coarse" and info["num_classes"] == 3 and info["best"]["epoch"] == summary["best_epoch"]
    # the exported network reproduces the validation Dice recorded for the best epoch
    from pipeline.training.amp import AmpPolicy
    from pipeline.training.distributed import DistContext
    from pipeline.training.step import RunContext
    from pipeline.training.validate import class_dice

    run = RunContext(spec, source, cfg.train, DistContext(), AmpPolicy("cpu", None, None), tmp_path, [],
                     source.case_ids("val"), [])
    dice = class_dice([model], run)
    assert dice[0] == pytest.approx(summary["best_dice"], abs=1e-6)


def test_deep_supervision_weights_are_nnunets() -> None:
    from pipeline.training.losses import ds_weights

    assert ds_weights(1) == [1.0]
    assert ds_weights(2) == [1.0, 0.0]
    assert ds_weights(4) == pytest.approx([4 / 7, 2 / 7, 1 / 7, 0.0])
    assert sum(ds_weights(6)) == pytest.approx(1.0) and ds_weights(6)[-1] == 0.0
