"""HGA (the PASSION authors' extension, `train_hga.py`): PASSION's losses, trained sequentially
over the 15 modality-subset groups with a Reptile-style interpolation after each cycle.

Group k holds every training case whose modalities include subset k, presented with exactly
mask k. Steps visit the groups in a freshly shuffled order per cycle of 15 steps (groups with no
case are skipped); after each cycle φ ← φ̃ + ε(φ − φ̃), φ̃ ← φ, with ε rising linearly from
`reptile_eps[0]` to `reptile_eps[1]` over training. Differences from PASSION (per the seed):
the student segmentation loss is not gated by the relative preference, the prototype
weight is 0.02, and the modal weights are 1 (the groups are sampled uniformly already). The seed's reversed β sign is *not* adopted (see the README): it would reduce
distillation for the modalities that are worst aligned, the opposite of the PASSION paper.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fine_seg.missing.passion import Passion
from fine_seg.missing.subsets import all_subsets, groups_containing, subset_mask
from pipeline.training.data import derive_seed


class HGA(Passion):
    name = "hga"
    sep_masked = False

    def __init__(self, settings: Any, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self.subsets = all_subsets(len(self.modalities))
        self.step_groups: dict[int, int] = {}  # global step → group index (current epoch)
        self.anchor: dict[str, torch.Tensor] | None = None  # φ̃
        self.visits = [0] * len(self.subsets)

    def modal_weights(self) -> np.ndarray:
        """(1, 1, 1, 1), as the authors: the group schedule already balances the modalities, so
        PASSION's inverse-frequency weights would count the imbalance twice."""
        return np.ones(len(self.modalities))

    def cycle_order(self, cycle: int) -> list[int]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, "hga-cycle", cycle))
        return [int(v) for v in torch.randperm(len(self.subsets), generator=g)]

    def group_plan(self, members: list[list[str]], first_step: int, steps: int) -> list[int]:
        """Group of each global step in [first_step, first_step + steps): position p of cycle
        ⌊s/15⌋'s shuffled order, moving on to the next non-empty group when p's group is empty."""
        k = len(self.subsets)
        if not any(members):
            raise ValueError("hga: no training case can present any modality group")
        plan = []
        for s in range(first_step, first_step + steps):
            order = self.cycle_order(s // k)
            pos = s % k
            while not members[order[pos % k]]:
                pos += 1
            plan.append(order[pos % k])
        return plan

    def epoch_items(self, source: Any, train_ids: list[str], count: int, epoch: int, iters: int,
                    per_step: int) -> list[tuple[str, int]]:
        avail = {cid: np.asarray(source.load(cid, "fine").modality_mask, bool) for cid in sorted(train_ids)}
        members = [[] for _ in self.subsets]
        for cid, a in avail.items():
            for g in groups_containing(a, self.subsets):
                members[g].append(cid)
        first = epoch * iters
        groups = self.group_plan(members, first, iters)
        self.step_groups = {first + i: g for i, g in enumerate(groups)}
        items: list[tuple[str, int]] = []
        for i, g in enumerate(groups):
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "hga-items", first + i))
            pick = torch.randint(len(members[g]), (per_step,), generator=gen)
            items += [(members[g][int(j)], derive_seed(self.seed, epoch, "hga", first + i, n)) for n, j in enumerate(pick)]
        return items[:count]

    def step_masks(self, available: torch.Tensor, global_step: int, total_steps: int) -> torch.Tensor:
        g = self.step_groups.get(global_step)
        if g is None:  # no plan (e.g. called outside the trainer): fall back to the available set
            return available.bool()
        self.visits[g] += 1
        mask = torch.as_tensor(subset_mask(self.subsets[g], available.shape[1]), device=available.device)
        mask = mask.expand_as(available)
        if not bool((available.bool() | ~mask).all()):
            raise ValueError(f"hga: a case of group {g} lacks one of its modalities")
        return mask.clone()

    def epsilon(self, global_step: int, total_steps: int) -> float:
        lo, hi = self.s.reptile_eps
        return lo + (hi - lo) * min(1.0, global_step / max(1, total_steps - 1))

    def after_step(self, net: torch.nn.Module, global_step: int, total_steps: int) -> None:
        """`global_step` is the step just taken (0-based); a cycle ends after every 15th."""
        params = dict(net.named_parameters())
        if self.anchor is None:
            return self._snapshot(params)
        if (global_step + 1) % len(self.subsets) == 0:
            eps = self.epsilon(global_step, total_steps)
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(self.anchor[name] + eps * (p - self.anchor[name]))
            self._snapshot(params)

    def _snapshot(self, params: dict[str, torch.Tensor]) -> None:
        self.anchor = {k: v.detach().clone() for k, v in params.items()}

    def start(self, net: torch.nn.Module) -> None:
        """φ̃ at the start of a cycle: the weights before its first step (after a resume, the
        anchor saved with the checkpoint, so that a cycle cut by the checkpoint ends as planned)."""
        if self.anchor is None:
            self._snapshot(dict(net.named_parameters()))

    def tensor_state(self) -> dict[str, torch.Tensor]:
        return {f"anchor.{k}": v for k, v in (self.anchor or {}).items()}

    def load_tensor_state(self, tensors: dict[str, torch.Tensor]) -> None:
        anchor = {k.removeprefix("anchor."): v for k, v in tensors.items() if k.startswith("anchor.")}
        self.anchor = anchor or None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "visits": list(self.visits)}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        super().load_state_dict(state)
        if state and "visits" in state:
            self.visits = [int(v) for v in state["visits"]]
