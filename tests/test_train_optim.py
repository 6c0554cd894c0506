"""`train.optimizer: sgd` against nnU-Net v2's optimiser as nnU-Net builds it, and the poly schedule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.training.optim import build_optimizer, lr_factor, param_groups, set_lr


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.InstanceNorm3d(4, affine=True), nn.LeakyReLU(0.01),
                         nn.Conv3d(4, 3, 1))


def test_sgd_steps_exactly_as_nnunets_sgd() -> None:
    ours_net, ref_net = _net(), _net()
    with torch.no_grad():  # non-trivial norm parameters, so decay on them shows
        for net in (ours_net, ref_net):
            net[1].weight.fill_(1.5)
            net[1].bias.fill_(0.3)
    ours = build_optimizer(param_groups([ours_net], 3e-5), "sgd", 0.01, momentum=0.99)
    # nnU-Net v2 (nnUNetTrainer.configure_optimizers): every parameter, one group
    ref = torch.optim.SGD(ref_net.parameters(), 0.01, weight_decay=3e-5, momentum=0.99, nesterov=True)
    g = torch.Generator().manual_seed(1)
    steps = 6
    for step in range(steps):
        x = torch.randn(2, 1, 6, 6, 6, generator=g)
        y = torch.randint(0, 3, (2, 6, 6, 6), generator=g)
        for net, opt in ((ours_net, ours), (ref_net, ref)):
            set_lr(opt, 0.01 * lr_factor(step, steps))
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for a, b in zip(ours_net.parameters(), ref_net.parameters(), strict=True):
        assert torch.equal(a, b)
    group = ours.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["dampening"], group["weight_decay"]) == (0.99, True, 0, 3e-5)


def test_sgd_decays_norm_and_bias_parameters_adamw_does_not() -> None:
    net = _net()
    groups = param_groups([net], 3e-5)
    sgd = build_optimizer(groups, "sgd", 0.01)
    assert len(sgd.param_groups) == 1 and len(sgd.param_groups[0]["params"]) == len(list(net.parameters()))
    adamw = build_optimizer(param_groups([net], 1e-4), "adamw", 1e-3)
    assert sorted(g["weight_decay"] for g in adamw.param_groups) == [0.0, 1e-4]
    # a parameter without gradient still shrinks under SGD's L2 term: p ← p − lr·wd·p on the first step
    bias = net[1].bias
    with torch.no_grad():
        bias.fill_(2.0)
    bias.grad = torch.zeros_like(bias)
    for p in net.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    sgd.step()
    assert torch.allclose(bias, torch.full_like(bias, 2.0 * (1 - 0.01 * 3e-5 * (1 + 0.99))))


def test_poly_schedule_equals_nnunets_at_epoch_starts() -> None:
    # nnU-Net's PolyLRScheduler, stepped once per epoch: lr0 · (1 − epoch / epochs)^0.9
    epochs, iters = 1000, 250
    for epoch, expect in ((0, 1.0), (250, 0.75**0.9), (500, 0.5**0.9), (999, 0.001**0.9)):
        assert lr_factor(epoch * iters, epochs * iters) == pytest.approx(expect, rel=1e-12)
    # within an epoch ours decays per step, never below the next epoch's value
    assert 0.5**0.9 > lr_factor(500 * iters + 125, epochs * iters) > (1 - 501 / 1000) ** 0.9


def test_adamw_stays_the_default_optimizer() -> None:
    from pipeline.config import TrainSection

    t = TrainSection()
    assert t.optimizer == "adamw" and t.momentum == 0.99
    assert t.grad_clip == 12.0  # nnU-Net clips the gradient norm at 12
