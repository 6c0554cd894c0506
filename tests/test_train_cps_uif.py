"""Cross pseudo supervision and uncertainty-based unlabeled filtering."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.training import uif
from pipeline.training.cps import cps_loss, cps_weight, pseudo_labels


def _certain_logits(label: torch.Tensor, k: int, scale: float = 100.0) -> torch.Tensor:
    return F.one_hot(label.long(), k).movedim(-1, 1).float() * scale


def test_pseudo_labels_keep_background_and_every_class() -> None:
    k = 14
    label = torch.arange(k).repeat_interleave(10)[torch.randperm(140, generator=torch.Generator().manual_seed(0))]
    label = label.reshape(1, 5, 4, 7)
    logits = _certain_logits(label, k, scale=3.0) + torch.randn(1, k, 5, 4, 7) * 0.1
    pl = pseudo_labels(logits)
    assert torch.equal(pl.long(), label)  # no shift: class c stays c, liver (1) and background (0) included
    assert set(pl.unique().tolist()) == set(range(k))
    assert not pl.requires_grad


def test_cps_loss_is_zero_when_networks_agree_with_certainty() -> None:
    k = 4
    label = torch.randint(0, k, (2, 6, 6, 6), generator=torch.Generator().manual_seed(1))
    a = _certain_logits(label, k).requires_grad_()
    b = _certain_logits(label, k).requires_grad_()
    assert float(cps_loss(a, b).detach()) < 1e-4
    other = torch.roll(label, 1, dims=1)
    loss = cps_loss(a, _certain_logits(other, k).requires_grad_())
    assert float(loss) > 1.0
    loss.backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_cps_weight_ramps_up() -> None:
    assert cps_weight(0, 1.0, 10) == pytest.approx(np.exp(-5))
    assert cps_weight(5, 2.0, 10) == pytest.approx(2 * np.exp(-5 * 0.25))
    assert cps_weight(10, 1.0, 10) == cps_weight(50, 1.0, 10) == 1.0
    assert cps_weight(0, 0.5, 0) == 0.5


def test_foreground_dice_reference_and_empty_rule() -> None:
    a = np.array([0, 1, 1, 2, 2, 2])
    b = np.array([0, 1, 0, 2, 2, 0])
    # class 1: 2·1/(2+1); class 2: 2·2/(3+2)
    assert uif.foreground_dice(a, b, 3) == pytest.approx(np.mean([2 / 3, 4 / 5]))
    assert uif.foreground_dice(np.zeros(5), np.zeros(5), 3) == 0.0  # nothing found is no pseudo-label


class SmoothThresholdNet(torch.nn.Module):
    """A fixed 'network': local mean over a k³ window, then class by threshold. Two window sizes
    behave like two differently initialised networks: they agree on clean piecewise-constant
    scans (except at borders) and disagree on noise, which each smooths differently."""

    def __init__(self, k: int, t: float = 0.75) -> None:
        super().__init__()
        self.k, self.t = k, t

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        v = F.avg_pool3d(x[:, :1], self.k, stride=1, padding=self.k // 2, count_include_pad=False)
        return torch.cat([torch.zeros_like(v), 8 * (v - self.t), 8 * (-v - self.t)], 1)


def test_corrupted_unlabeled_scan_ranks_last(tmp_path) -> None:
    from train_helpers import make_case

    from pipeline.training.amp import AmpPolicy
    from pipeline.training.data import MemorySource
    from pipeline.training.distributed import DistContext
    from pipeline.training.step import RunContext
    from pipeline.training.trainer import StageSpec

    samples = {f"u{i:02d}": make_case(i, labeled=False) for i in range(7)}
    samples["u03"] = make_case(99, labeled=False, corrupt=True)  # pure noise, in the middle by id
    source = MemorySource(samples, {"unlabeled": sorted(samples)})
    nets = [SmoothThresholdNet(3), SmoothThresholdNet(5)]
    spec = StageSpec("coarse", {}, None, 3, "coarse")

    from pipeline.config import TrainSection

    cfg = TrainSection.model_validate({"cps": {"enabled": True},
                                       "uif": {"enabled": True, "refresh_every": 1, "start_epoch": 2, "keep": 4}})
    state = uif.new_state()
    run = RunContext(spec, source, cfg, DistContext(), AmpPolicy("cpu", None, None), tmp_path, [], [], sorted(samples))
    pool1 = uif.refresh(1, nets, run, sorted(samples), state)
    assert pool1 == sorted(samples)  # before start_epoch: scored, all kept
    nets[1].t = 0.7  # the second checkpoint moves a little
    pool2 = uif.refresh(2, nets, run, sorted(samples), state)
    ranking = json.loads((tmp_path / "uif" / "ranking.json").read_text())
    assert ranking["applied"] and ranking["kept"] == 4 and ranking["total"] == 7
    rows = ranking["ranking"]
    assert rows[-1]["case_id"] == "u03", [(r["case_id"], round(r["score"], 3)) for r in rows]
    assert rows[-1]["disagreement"] > max(r["disagreement"] for r in rows[:-1]) + 0.1
    assert all(r["instability"] is not None for r in rows)  # one refresh of history
    assert "u03" not in pool2 and len(pool2) == 4
    assert pool2 == sorted(r["case_id"] for r in rows if r["selected"])
    # snapshots are bounded: only the two latest refreshes stay on disk
    uif.refresh(3, nets, run, sorted(samples), state)
    assert sorted(p.name for p in (tmp_path / "uif" / "pseudo_labels").iterdir()) == ["e0002", "e0003"]
    assert state["history"]["u00"][1] == 2


def test_rank_combines_disagreement_and_instability() -> None:
    scores = {"a": {"disagreement": 0.1}, "b": {"disagreement": 0.2}, "c": {"disagreement": 0.15}}
    hist = {"a": [1.8, 2], "b": [0.0, 2], "c": [0.2, 2]}  # a is unstable across checkpoints
    rows = uif.rank_scans(scores, hist, alpha=0.5)
    assert [r["case_id"] for r in rows] == ["b", "c", "a"]
    assert rows[2]["score"] == pytest.approx(0.5 * 0.1 + 0.5 * 0.9)
    assert uif.select_count(2000, 200, 0.5) == 200
    assert uif.select_count(2000, None, 0.1) == 200
    assert uif.select_count(3, None, 0.01) == 1 and uif.select_count(0, None, 0.5) == 0


def test_cutmix_boxes_have_the_drawn_share_and_stay_inside() -> None:
    from pipeline.training.cps import cutmix_boxes

    gen = torch.Generator().manual_seed(3)
    shape = (64, 20, 30, 40)
    boxes = cutmix_boxes(shape, (0.25, 0.5), gen)
    assert boxes.shape == shape and boxes.dtype == torch.bool
    shares = boxes.flatten(1).float().mean(1)
    assert shares.min() > 0.2 and shares.max() < 0.56  # rounding of each side moves the share a little
    assert shares.std() > 0.03  # drawn per row, not one box for all
    for box in boxes:  # one solid box: its bounding box is all set
        idx = box.nonzero()
        lo, hi = idx.min(0).values, idx.max(0).values + 1
        assert int((hi - lo).prod()) == int(box.sum())


def test_cutmix_rows_take_the_next_rows_content_inside_the_box() -> None:
    from pipeline.training.cps import cutmix_rows

    x = torch.arange(3.0).reshape(3, 1, 1, 1, 1).expand(3, 2, 4, 5, 6).clone()  # row r holds value r
    lab = torch.arange(3).reshape(3, 1, 1, 1).expand(3, 4, 5, 6).to(torch.uint8).clone()
    boxes = torch.zeros(3, 4, 5, 6, dtype=torch.bool)
    boxes[0, :2, :3, :4] = True
    boxes[2, 1:, 2:, 3:] = True
    mx, (ml,) = cutmix_rows(x, [lab], boxes)
    for r in range(3):
        inside = boxes[r]
        assert (mx[r][:, inside] == (r + 1) % 3).all() and (mx[r][:, ~inside] == r).all()
        assert (ml[r][inside] == (r + 1) % 3).all() and (ml[r][~inside] == r).all()


class PointwiseNet(torch.nn.Module):
    """A voxel-wise 'network' (1×1×1 convolution): its labels of a mixed patch are the mixed labels
    of the unmixed patches, so CutMix-CPS between two copies of it has nothing left to teach."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 3, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.0, 4000.0, -4000.0]).reshape(3, 1, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, -2000.0, -2000.0]))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class BlurNet(PointwiseNet):
    """The same classifier after a 5³ box blur: its labels near a box edge depend on both rows."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.conv(F.avg_pool3d(x, 5, stride=1, padding=2, count_include_pad=False))


def _cutmix_cps_term(net: torch.nn.Module) -> float:
    from types import SimpleNamespace

    from pipeline.config import CPSSection
    from pipeline.training.amp import AmpPolicy
    from pipeline.training.cps import CPSStep
    from pipeline.training.step import Batch, StepAt
    from pipeline.training.trainer import ModelPair

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(5, 1, 10, 12, 12, generator=g)
    x = F.avg_pool3d(noise, 3, stride=1, padding=1) * 4  # blobs around ±1, not salt and pepper
    lab = ((x > 0.5).long() + 2 * (x < -0.5).long())
    step = CPSStep("dice_ce", CPSSection(enabled=True, cutmix=True, rampup_epochs=0), SimpleNamespace(enabled=False))
    batch = Batch(x, torch.ones(5, 1, dtype=torch.bool), lab[:2, 0].to(torch.uint8), ["a", "b"])
    out = step.loss(ModelPair([net, net]), batch, StepAt(0, 0, 0, 1, 1), AmpPolicy("cpu", None, None))
    return out.parts["cps"]


def test_cutmix_cps_mixes_pseudo_labels_with_the_input_box() -> None:
    pointwise, blurred = _cutmix_cps_term(PointwiseNet()), _cutmix_cps_term(BlurNet())
    assert pointwise < 0.05  # box and roll direction of labels and input agree
    assert blurred > pointwise + 0.05  # a context-using network is taught something at the box edges


def test_cutmix_needs_pairs_of_unlabeled_patches() -> None:
    from pydantic import ValidationError

    from pipeline.config import SegpipeConfig

    def config(cps: bool, unlabeled: int) -> SegpipeConfig:
        return SegpipeConfig.model_validate({"train": {"cps": {"enabled": cps, "cutmix": True}},
                                             "fine": {"train": {"unlabeled_batch_size": unlabeled}}})

    assert config(True, 2).train.cps.cutmix
    with pytest.raises(ValidationError, match=r"fine\.train\.unlabeled_batch_size must be >= 2"):
        config(True, 1)
    with pytest.raises(ValidationError, match=r"cutmix needs cps\.enabled"):
        config(False, 2)
