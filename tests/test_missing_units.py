"""Missing-modality methods, the pieces on tiny tensors: subsets and dropout schedules, the
auxiliary losses (alignment, classification, distillation, KL, prototypes), LCKD's teacher
election, PASSION's β update, HGA's group plan and Reptile step."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fine_seg.missing.losses import (
    alignment_loss,
    feature_distillation_loss,
    kl_distillation,
    modality_classification_loss,
    prototype_loss,
)
from fine_seg.missing.subsets import (
    all_subsets,
    groups_containing,
    imbalanced_masks,
    parse_subsets,
    random_subset_masks,
    schedule_masks,
    subset_name,
)
from pipeline.config import missing_settings

RATES = {"flair": 0.6, "t1": 0.2, "t1ce": 0.4, "t2": 0.8}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_fifteen_subsets_and_parsing() -> None:
    subs = all_subsets(4)
    assert len(subs) == 15 and len(set(subs)) == 15 and all(subs)
    assert subs[0] == (0,) and subs[-1] == (0, 1, 2, 3)
    assert subset_name((0, 2)) == "flair+t1ce"
    assert parse_subsets("all") == subs
    assert parse_subsets("t2+flair,t1ce") == [(0, 3), (2,)]
    with pytest.raises(ValueError, match="unknown modality"):
        parse_subsets("t3")


def test_random_subsets_stay_inside_the_available_modalities() -> None:
    g = torch.Generator().manual_seed(0)
    avail = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool).repeat(50, 1)
    seen = set()
    for _ in range(5):
        m = random_subset_masks(avail, g)
        assert bool(m.any(1).all()) and not bool((m & ~avail).any())
        seen |= {tuple(r.tolist()) for r in m[2::3]}
        lk = random_subset_masks(avail, g, keep_all_missing=1)  # LCKD: something is always dropped
        multi = avail.sum(1) > 1
        assert bool((lk[multi].sum(1) < avail[multi].sum(1)).all()) and bool(lk.any(1).all())
    assert len(seen) == 15  # from a complete case every non-empty subset comes up
    # warm-up: the available modalities; afterwards dropout with probability p
    assert torch.equal(schedule_masks(avail, 10, 100, g, warmup_fraction=0.44, p=1.0), avail)
    after = schedule_masks(avail, 50, 100, g, warmup_fraction=0.44, p=1.0)
    assert not torch.equal(after, avail)
    assert torch.equal(schedule_masks(avail, 50, 100, g, warmup_fraction=0.44, p=0.0), avail)


def _frequencies(masks: torch.Tensor) -> dict[tuple[int, ...], float]:
    rows = [tuple(int(i) for i in torch.nonzero(r).flatten()) for r in masks]
    return {s: rows.count(s) / len(rows) for s in set(rows)}


def test_uniform_subset_sampling_gives_every_subset_the_same_share() -> None:
    """train.modality_subsets uniform: each non-empty subset of a case's modalities 1/(2^n − 1) of
    the draws; by_size (ShaSpec's random mode) 1/16 per single, 1/24 per pair, 1/4 for the full set."""
    g = torch.Generator().manual_seed(1)
    n = 15000  # expected 1000 per subset, sd ≈ 31
    full = torch.ones(n, 4, dtype=torch.bool)
    uni = _frequencies(random_subset_masks(full, g))
    assert set(uni) == set(all_subsets(4))
    assert all(f == pytest.approx(1 / 15, rel=0.15) for f in uni.values()), uni
    size = _frequencies(random_subset_masks(full, g, sampling="by_size"))
    expected = {1: 1 / 16, 2: 1 / 24, 3: 1 / 16, 4: 1 / 4}
    assert all(f == pytest.approx(expected[len(s)], rel=0.15) for s, f in size.items()), size
    # a case with flair, t1ce and t2 only: the 7 subsets of those, uniformly
    part = _frequencies(random_subset_masks(torch.tensor([[1, 0, 1, 1]], dtype=torch.bool).repeat(7000, 1), g))
    assert set(part) == {s for s in all_subsets(4) if 1 not in s}
    assert all(f == pytest.approx(1 / 7, rel=0.15) for f in part.values()), part
    # LCKD (keep_all_missing=1): the 14 strict subsets, uniformly
    lckd = _frequencies(random_subset_masks(full[:14000], g, keep_all_missing=1))
    assert set(lckd) == set(all_subsets(4)[:-1])
    assert all(f == pytest.approx(1 / 14, rel=0.15) for f in lckd.values()), lckd
    with pytest.raises(ValueError, match="subset sampling"):
        random_subset_masks(full[:2], g, sampling="sized")


def test_shaspec_schedule_follows_train_modality_subsets() -> None:
    """What a ShaSpec run with a config's train.modality_subsets trains on after the warm-up: the
    masks its step draws, counted (the shipped demo weights saw each pair in ~2 % of the samples)."""
    from fine_seg.train import stage_spec
    from pipeline.config import validate_config
    from pipeline.tasks import get_task

    def shares(subsets: str | None) -> dict[tuple[int, ...], float]:
        train = {"modality_subsets": subsets} if subsets else {}
        cfg = validate_config({"task": {"name": "brats"}, "fine": {"method": "shaspec", "missing": {"warmup_fraction": 0.0}},
                               "train": train}, "test")
        method = stage_spec(cfg, get_task("brats")).method
        avail = torch.ones(8, 4, dtype=torch.bool)
        return _frequencies(torch.cat([method.masks(avail, step, 1000) for step in range(1000)]))

    default = shares(None)
    assert len(default) == 15 and all(f == pytest.approx(1 / 15, rel=0.15) for f in default.values()), default
    size = shares("by_size")
    assert size[(0, 1, 2, 3)] == pytest.approx(1 / 4, rel=0.15) and size[(0, 1)] == pytest.approx(1 / 24, rel=0.2)


def test_imbalanced_masks_have_the_requested_rates_and_no_empty_case() -> None:
    ids = [f"c{i:03d}" for i in range(200)]
    masks = imbalanced_masks(ids, RATES, seed=3)
    a = np.stack([masks[c] for c in ids])
    assert a.any(1).all()
    missing = 1 - a.mean(0)
    # exact quotas, minus the few cases rescued from having nothing (they keep t1, the least missing)
    assert missing[0] == pytest.approx(0.6) and missing[2] == pytest.approx(0.4) and missing[3] == pytest.approx(0.8)
    assert 0.15 <= missing[1] <= 0.2
    assert imbalanced_masks(ids, RATES, seed=3)["c007"].tolist() == masks["c007"].tolist()
    assert groups_containing(np.array([1, 0, 1, 0], bool), all_subsets()) == [0, 2, 5]


def test_alignment_uses_present_pairs_only() -> None:
    f = torch.zeros(2, 4, 3, 2, 2, 2)
    f[:, 1] = 1.0  # t1 differs from the others by exactly 1
    f[:, 3] = 100.0  # t2 is garbage but missing
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    # pairs (0,1), (0,2), (1,2): |Δ| = 1, 0, 1 → mean 2/3
    assert float(alignment_loss(f, mask)) == pytest.approx(2 / 3)
    same = torch.ones(2, 4, 3, 2, 2, 2)
    assert float(alignment_loss(same, torch.ones(2, 4, dtype=torch.bool))) == 0.0
    lone = alignment_loss(f.requires_grad_(), torch.tensor([[1, 0, 0, 0], [0, 0, 1, 0]], dtype=torch.bool))
    assert float(lone.detach()) == 0.0 and lone.requires_grad


def test_modality_classification_ignores_missing_slots() -> None:
    good = torch.eye(4).repeat(2, 1, 1) * 20  # slot m predicts class m
    mask = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 1]], dtype=torch.bool)
    assert float(modality_classification_loss(good, mask)) < 1e-6
    bad = good.clone()
    bad[0, 2] = torch.tensor([20.0, 0, 0, 0])  # wrong, but that slot is missing
    assert float(modality_classification_loss(bad, mask)) < 1e-6
    bad[0, 1] = torch.tensor([20.0, 0, 0, 0])  # wrong on a present slot
    assert float(modality_classification_loss(bad, mask)) > 1.0


def test_feature_distillation_is_teacher_to_student_only() -> None:
    f = torch.zeros(1, 4, 2, 2, 2, 2)
    f[:, 2] = 3.0
    f.requires_grad_()
    mask = torch.tensor([[1, 0, 1, 1]], dtype=torch.bool)
    loss = feature_distillation_loss(f, mask, teachers=[2])
    assert float(loss.detach()) == pytest.approx(6.0)  # students flair and t2, |Δ| = 3 each; t1 is missing
    loss.backward()
    assert f.grad[0, 2].abs().sum() == 0  # the teacher's feature is detached
    assert f.grad[0, 0].abs().sum() > 0 and f.grad[0, 1].abs().sum() == 0
    assert float(feature_distillation_loss(f, mask, teachers=[1]).detach()) == 0.0  # absent teacher


def test_kl_distillation_against_reference_values() -> None:
    # hand-computed: teacher p = (1/4, 3/4), student p = (1/2, 1/2) → KL = ¼ln½ + ¾ln(3/2)
    t = torch.tensor([0.0, np.log(3.0)]).view(1, 2, 1, 1, 1)
    s = torch.zeros(1, 2, 1, 1, 1)
    ref = 0.25 * np.log(0.5) + 0.75 * np.log(1.5)  # 0.130812...
    assert float(kl_distillation(t, s, temperature=1.0)) == pytest.approx(ref, rel=1e-6)
    # at T = 2 the logits are halved and the term scaled by T² = 4 (PASSION's temp_kl_loss_bs)
    assert float(kl_distillation(2 * t, s, temperature=2.0)) == pytest.approx(4 * ref, rel=1e-6)
    # unclamped probabilities: torch's own KL, voxel-averaged per sample
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(2, 4, 3, 3, 3, generator=g), torch.randn(2, 4, 3, 3, 3, generator=g)
    torch_kl = F.kl_div(torch.log_softmax(s / 4, 1), torch.log_softmax(t / 4, 1), reduction="none", log_target=True)
    assert torch.allclose(kl_distillation(t, s), 16 * torch_kl.sum(1).flatten(1).mean(1), atol=1e-6)
    assert torch.allclose(kl_distillation(t, t), torch.zeros(2), atol=1e-6)
    s.requires_grad_()
    t.requires_grad_()
    kl_distillation(t, s).sum().backward()
    assert t.grad is None and s.grad.abs().sum() > 0
    # clamping bounds the penalty of a confidently wrong student
    hard_t = torch.tensor([100.0, -100, -100, -100]).view(1, 4, 1, 1, 1)
    hard_s = torch.tensor([-100.0, 100, -100, -100]).view(1, 4, 1, 1, 1)
    assert float(kl_distillation(hard_t, hard_s, temperature=1.0)) == pytest.approx(
        np.log(1 / 0.005) + 0.005 * np.log(0.005 / 1), abs=1e-3)  # clamped, not renormalised


def test_prototype_loss_zero_for_identical_features_and_skips_absent_classes() -> None:
    g = torch.Generator().manual_seed(1)
    feat = torch.randn(2, 5, 4, 4, 4, generator=g)
    target = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    target[0, :2] = 1
    target[1, :, :2] = 3  # class 3 only in sample 1; classes 1/3 absent elsewhere are skipped
    mse, dist = prototype_loss(feat, feat, target, 4)
    assert torch.allclose(mse, torch.zeros(2), atol=1e-7) and torch.allclose(dist, torch.zeros(2), atol=1e-7)
    other = torch.randn(2, 5, 4, 4, 4, generator=g, requires_grad=True)
    mse, dist = prototype_loss(feat, other, target, 4)
    assert bool((mse > 0).all()) and bool((dist > 0).all())
    mse.sum().backward()
    assert other.grad.abs().sum() > 0
    # scale invariance of cosine similarity: a scaled student matches exactly
    mse2, _ = prototype_loss(feat, 3 * feat, target, 4)
    assert float(mse2.max()) < 1e-10


def test_lckd_elects_the_best_modality_per_region() -> None:
    from fine_seg.missing.lckd import elect_teachers, single_modality_scores

    label = np.zeros((6, 6, 6), np.uint8)
    label[1:5, 1:5, 1:5] = 2
    label[2:4, 2:4, 2:4] = 3

    class Oracle(torch.nn.Module):
        """Exact with t1ce; with flair only the whole tumour (as edema); otherwise nothing."""

        def forward(self, x, mask):
            pred = torch.zeros_like(torch.from_numpy(label)).long()
            if bool(mask[0, 2]):
                pred = torch.from_numpy(label).long()
            elif bool(mask[0, 0]):
                pred = torch.from_numpy((label > 0).astype(np.int64) * 2)
            return torch.nn.functional.one_hot(pred, 4).permute(3, 0, 1, 2)[None].float()

    sample = types.SimpleNamespace(image=np.zeros((4, 6, 6, 6), np.float32), label=label,
                                   modality_mask=np.ones(4, bool))
    scores = single_modality_scores(Oracle(), [sample], torch.device("cpu"), 4)
    assert scores[2] == {"ET": 1.0, "TC": 1.0, "WT": 1.0}
    assert scores[0]["WT"] == 1.0 and scores[0]["ET"] == 0.0
    teachers, per_region = elect_teachers(scores, [0])
    assert per_region == {"ET": 2, "TC": 2, "WT": 0} and teachers == [0, 2]  # WT tie → lower index
    scores[0]["WT"] = 0.5
    assert elect_teachers(scores, [0])[0] == [2]
    # a modality missing from every validation case cannot be elected
    sample.modality_mask = np.array([1, 1, 0, 1], bool)
    teachers, _ = elect_teachers(single_modality_scores(Oracle(), [sample], torch.device("cpu"), 4), [0])
    assert teachers == [0]


def test_beta_update_direction_clamping_and_norm() -> None:
    from fine_seg.missing.passion import relative_preference, update_beta

    beta = [1.0, 1.0, 1.0, 1.0]
    new = update_beta(beta, [1.0, 1.0, 1.0, 5.0], eta=0.5)
    assert np.linalg.norm(new) == pytest.approx(2.0)
    assert new[3] > new[0] == pytest.approx(new[1])  # under-aligned t2 gets more distillation
    hga = update_beta(beta, [1.0, 1.0, 1.0, 5.0], eta=0.5, sign=-1.0)
    assert hga[3] < hga[0]
    # clamping happens before the renormalisation: a huge step cannot drive β below β_min·scale
    big = update_beta(beta, [0.0, 0.0, 0.0, 100.0], eta=100.0)
    raw = np.clip([1 + 100 * -1, 1 + 100 * -1, 1 + 100 * -1, 1 + 100 * 3], 0.1, 4.0)
    assert np.allclose(big, raw * 2 / np.linalg.norm(raw))
    # unobserved modalities keep their β (up to the renormalisation)
    part = update_beta(beta, [1.0, None, 3.0, None], eta=0.1)
    assert part[1] == pytest.approx(part[3])
    assert relative_preference([1.0, 3.0, None, 2.0]) == pytest.approx([-0.5, 0.5, 0.0, 0.0])


def _settings(method: str = "passion", **kw):
    return missing_settings(method, **kw)


def test_passion_epoch_end_updates_beta_and_grows_eta() -> None:
    from fine_seg.missing.passion import Passion

    p = Passion(_settings(eta=0.1, eta_growth_every=2), num_classes=4)
    p.epoch_dist = [[0.1], [0.1], [0.1], [0.5]]
    info = p.epoch_end(torch.nn.Linear(1, 1), 0, None, [], torch.device("cpu"))
    assert info["beta"][3] > info["beta"][0] and p.eta == pytest.approx(0.1)
    p.epoch_end(torch.nn.Linear(1, 1), 1, None, [], torch.device("cpu"))
    assert p.eta == pytest.approx(0.15)
    q = Passion(_settings(), num_classes=4)
    q.load_state_dict(p.state_dict())
    assert q.beta == p.beta and q.eta == p.eta


def test_hga_plan_visits_all_fifteen_groups_each_cycle() -> None:
    from fine_seg.missing.hga import HGA

    h = HGA(_settings("hga"), num_classes=4, seed=5)
    members = [[f"case{g}"] for g in range(15)]
    plan = h.group_plan(members, first_step=30, steps=30)
    assert sorted(plan[:15]) == list(range(15)) and sorted(plan[15:]) == list(range(15))
    assert plan[:15] != plan[15:]  # reshuffled per cycle
    members[14] = []  # nobody has all four modalities: that group is skipped, the rest still come up
    plan = h.group_plan(members, 0, 15)
    assert 14 not in plan and set(plan) == set(range(14))


def test_hga_epoch_items_present_their_group() -> None:
    from fine_seg.missing.hga import HGA

    masks = imbalanced_masks([f"c{i}" for i in range(40)], RATES, seed=0)
    source = types.SimpleNamespace(load=lambda cid, stage: types.SimpleNamespace(modality_mask=masks[cid]))
    h = HGA(_settings("hga"), num_classes=4, seed=1)
    items = h.epoch_items(source, sorted(masks), count=30 * 2, epoch=1, iters=30, per_step=2)
    assert len(items) == 60
    for s in range(30):
        g = h.step_groups[30 + s]
        avail = torch.as_tensor(np.stack([masks[c] for c, _ in items[2 * s:2 * s + 2]]))
        m = h.step_masks(avail, 30 + s, 100)
        assert torch.equal(m[0], torch.as_tensor(np.isin(range(4), h.subsets[g])))
        assert not bool((m & ~avail).any())
    assert sum(v > 0 for v in h.visits) >= 14


def test_hga_reptile_interpolates_after_each_cycle() -> None:
    from fine_seg.missing.hga import HGA

    h = HGA(_settings("hga", reptile_eps=(0.1, 1.0)), num_classes=4)
    net = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    h.start(net)
    for step in range(15):
        with torch.no_grad():
            net.weight.add_(1.0)  # an "optimiser step"
        h.after_step(net, step, total_steps=151)
        if step < 14:
            assert float(net.weight.detach()[0, 0]) == pytest.approx(2.0 + step)
    eps = 0.1 + 0.9 * 14 / 150
    assert float(net.weight.detach()[0, 0]) == pytest.approx(1.0 + eps * 15.0)
    assert float(h.anchor["weight"][0, 0]) == pytest.approx(1.0 + eps * 15.0)
    assert h.epsilon(150, 151) == pytest.approx(1.0)
