"""Validation during training: score every network on the validation split, keep the best one.

A `Scorer` turns the networks into one number each (higher is better). The default is the mean
over validation cases of the mean Dice over the classes in the ground truth or the prediction;
a stage can bring its own (the missing-modality methods score the mean over the 15 modality
subsets, `pipeline.training.subset_validate`). `validate_epoch` records the scores and writes
`best.safetensors` when the best network improves on the best so far.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from evaluation.surface import mean_dice
from pipeline.errors import SegpipeError
from pipeline.training.amp import AmpPolicy
from pipeline.training.checkpoint import save_best
from pipeline.training.data import SampleLike
from pipeline.training.distributed import gather_objects, shard
from pipeline.training.step import RunContext, main_output


class Scorer(Protocol):
    def __call__(self, nets: list[nn.Module], run: RunContext) -> list[float]:
        """One validation score per network (NaN when there is nothing to score)."""


@torch.inference_mode()
def predict_probs(net: nn.Module, sample: SampleLike, device: torch.device, policy: AmpPolicy) -> torch.Tensor:
    x = torch.from_numpy(np.array(sample.image, dtype=np.float32))[None].to(device)
    m = torch.as_tensor(np.asarray(sample.modality_mask, dtype=bool))[None].to(device)
    with policy.autocast():
        logits = main_output(net(x, m))
    return torch.softmax(logits.float(), 1)[0]


def case_dice(pred: torch.Tensor, gt: torch.Tensor, num_classes: int) -> float:
    """Mean Dice over the foreground classes in the ground truth or the prediction (a class
    predicted but absent from GT scores 0); 1.0 when neither has any foreground."""
    return mean_dice(gt, pred, range(1, num_classes), empty=float("nan"), none=1.0)


def mean_case_scores(local: dict[str, list[float]], run: RunContext, count: int) -> list[float]:
    """Per-network means of {case: [score per network]} gathered from every process."""
    merged: dict[str, list[float]] = {}
    for part in gather_objects(local, run.ctx):
        merged.update(part)
    if not merged:
        return [float("nan")] * count
    return [float(np.mean([v[i] for v in merged.values()])) for i in range(count)]


def class_dice(nets: list[nn.Module], run: RunContext) -> list[float]:
    """The default scorer: mean case Dice of each network on the validation cases (sharded over ranks)."""
    for net in nets:
        net.eval()
    local: dict[str, list[float]] = {}
    for cid in shard(run.val_ids, run.ctx):
        sample = run.source.load(cid, run.spec.sample_stage)
        if sample.label is None:
            raise SegpipeError(f"case {cid}: validation case without a label map")
        gt = torch.from_numpy(np.array(sample.label, dtype=np.uint8)).to(run.ctx.device)
        local[cid] = [case_dice(predict_probs(n, sample, run.ctx.device, run.policy).argmax(0), gt,
                                run.spec.num_classes) for n in nets]
    return mean_case_scores(local, run, len(nets))


def validation_due(epoch: int, epochs: int, every: int) -> bool:
    return (epoch + 1) % every == 0 or epoch + 1 == epochs


def validate_epoch(run: RunContext, epoch: int, nets: list[nn.Module], state: dict[str, Any],
                   scorer: Scorer) -> list[float]:
    """Score the networks; on improvement update state's best_* and (main process) save the best one."""
    scores = scorer(nets, run) if run.val_ids else [float("nan")] * len(nets)
    best_i = int(np.nanargmax(scores)) if not all(math.isnan(d) for d in scores) else 0
    score = scores[best_i]
    improved = state["best_dice"] is None or (not math.isnan(score) and score > state["best_dice"]) \
        or (math.isnan(score) and not run.val_ids)
    if improved:
        state.update(best_dice=None if math.isnan(score) else score, best_epoch=epoch + 1, best_net=best_i)
        if run.ctx.is_main:
            save_best(run.out_dir, nets[best_i], {"stage": run.spec.name, "epoch": epoch + 1, "net": best_i,
                                                  "val_dice": state["best_dice"]})
    return scores
