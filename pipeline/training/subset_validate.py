"""Model selection of a stage that must work on any modality subset (a missing-modality method,
or the plain coarse/fine network trained with `modality_dropout`): the validation Dice per region
(ET/TC/WT), averaged over the cases of each non-empty modality subset and then over the subsets,
as the papers report (evaluation/subsets.py) — not the all-modality Dice the engine uses by default.

A validation case enters a subset only if it has the subset's modalities, and is run with
exactly those (the others masked). Dice only (no HD95), sharded over the training processes.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from evaluation.subsets import SubsetCase, evaluate_subsets, summarise
from pipeline.errors import SegpipeError
from pipeline.training.distributed import gather_objects, shard
from pipeline.training.step import RunContext
from pipeline.training.validate import Scorer, predict_probs


def _cases(run: RunContext) -> list[SubsetCase]:
    out = []
    for cid in shard(run.val_ids, run.ctx):
        sample = run.source.load(cid, run.spec.sample_stage)
        if sample.label is None:
            raise SegpipeError(f"case {cid}: validation case without a label map")
        out.append(SubsetCase(cid, np.asarray(sample.label), (1.0, 1.0, 1.0),
                              np.asarray(sample.modality_mask, bool), sample))
    return out


def subset_rows(net: nn.Module, cases: list[SubsetCase], run: RunContext, names: Sequence[str]) -> dict[str, Any]:
    """This process's per-subset, per-case region Dice of `net`."""

    def predict(case: SubsetCase, mask: np.ndarray) -> np.ndarray:
        masked = types.SimpleNamespace(image=case.data.image, modality_mask=mask)
        return predict_probs(net, masked, run.ctx.device, run.policy).argmax(0).to("cpu").numpy().astype(np.uint8)

    return evaluate_subsets(predict, cases, convention="2023", names=names, hd95=False)["subsets"]


def mean_over_subsets(parts: list[dict[str, Any]]) -> float:
    """Mean over regions of the mean over subsets, from every process's rows."""
    rows = {name: {**row, "cases": {}} for name, row in parts[0].items()}
    for part in parts:
        for name, row in part.items():
            rows[name]["cases"].update(row["cases"])
    dice = [v["dice"] for v in summarise(rows).values() if v["dice"] is not None]
    return float(np.mean(dice)) if dice else float("nan")


def subset_selection(task: Any, info: dict[str, Any]) -> Scorer:
    """The scorer of a stage that learns to work on any modality subset (a missing-modality method,
    or `modality_dropout` of the plain coarse/fine network): the checkpoint that is best on the mean
    over the subsets, as the papers report, not on all modalities (which it rarely gets alone).
    Records the rule in the stage's `info`."""
    info["model_selection"] = f"mean validation Dice over regions and the {2 ** len(task.modalities) - 1} modality subsets"
    return subset_scorer(task.modalities)


def subset_scorer(names: Sequence[str]) -> Scorer:
    """The engine's validation scorer for a method (`StageSpec.scorer`)."""

    def score(nets: list[nn.Module], run: RunContext) -> list[float]:
        for net in nets:
            net.eval()
        cases = _cases(run)
        return [mean_over_subsets(gather_objects(subset_rows(net, cases, run, names), run.ctx)) for net in nets]

    return score
