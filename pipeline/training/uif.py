"""Uncertainty-based unlabeled filtering (UIF): which unlabeled scans feed cross pseudo supervision.

CSSN's README keeps the 200 of 2000 unlabeled scans "with low uncertainty" and cites ST++, but
its code has no such step. segpipe's definition (also in the README):

* Every `refresh_every` epochs, both CPS networks predict each unlabeled scan (eval mode).
* Disagreement D = 1 − mean Dice over the foreground classes predicted by either network
  between the two argmax maps (two differently initialised networks disagree where the scan
  is hard or out of distribution).
* Instability S = 1 − mean foreground Dice between the scan's ensemble pseudo-label (argmax of
  the averaged softmax) now and at the previous refresh (ST++: reliable pseudo-labels stay
  stable across checkpoints). S̄ is its running mean over all refreshes so far.
* A scan where nothing but background is predicted counts as Dice 0 (D = S = 1): an empty
  pseudo-label teaches nothing, and every scan of the task should contain foreground.
* Score U = α·D + (1−α)·S̄ (U = D until an instability exists). Scans are ranked by U
  ascending (ties by case id); the top `keep` (or `fraction`) form the unlabeled pool from
  `start_epoch` on (default 2·refresh_every, so the first filtering already has one S); before
  that all unlabeled scans are used. Rankings are logged and saved as JSON.
Pseudo-label snapshots live on disk at 1/`history_stride` resolution (uint8), one per scan and
refresh, and only the latest two refreshes are kept: memory stays bounded for 2000 scans.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from evaluation.surface import mean_dice
from pipeline.fsutil import atomic_path, atomic_write_text, safe_child
from pipeline.log import get_logger
from pipeline.training.distributed import barrier, gather_objects, shard
from pipeline.training.step import RunContext

log = get_logger("train")


def foreground_dice(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, num_classes: int) -> float:
    """Mean Dice over classes 1..K-1 present in a or b; 0.0 if neither has any foreground."""
    return mean_dice(a, b, range(1, num_classes), empty=float("nan"), none=0.0)


def score_scan(probs: list[torch.Tensor], previous: np.ndarray | None, stride: int) -> dict[str, Any]:
    """`probs`: per-network softmax [K,Z,Y,X]. Returns disagreement, instability (or None), pseudo-label."""
    k = probs[0].shape[0]
    labels = [p.argmax(0) for p in probs]
    if len(labels) > 1:
        dice = [foreground_dice(labels[i], labels[j], k) for i in range(len(labels)) for j in range(i + 1, len(labels))]
        disagreement = 1.0 - float(np.mean(dice))
    else:  # a single network: disagreement degenerates to its own foreground/no-foreground check
        disagreement = 1.0 - (1.0 if bool((labels[0] > 0).any()) else 0.0)
    ensemble = torch.stack(probs).mean(0).argmax(0)
    small = ensemble[::stride, ::stride, ::stride].to(torch.uint8).cpu().numpy()
    instability = None
    if previous is not None and previous.shape == small.shape:
        instability = 1.0 - foreground_dice(small, previous, k)
    return {"disagreement": disagreement, "instability": instability, "pseudo_label": small}


def rank_scans(scores: dict[str, dict[str, float]], history: dict[str, list[float]], alpha: float) -> list[dict[str, Any]]:
    """Scores → ranking (most certain first). `history[case] = [sum of instabilities, count]`."""
    rows = []
    for cid, s in scores.items():
        total, n = history.get(cid, [0.0, 0])
        mean_s = total / n if n else None
        u = s["disagreement"] if mean_s is None else alpha * s["disagreement"] + (1 - alpha) * mean_s
        rows.append({"case_id": cid, "score": float(u), "disagreement": float(s["disagreement"]),
                     "instability": None if mean_s is None else float(mean_s)})
    rows.sort(key=lambda r: (r["score"], r["case_id"]))
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    return rows


def select_count(n: int, keep: int | None, fraction: float) -> int:
    if n == 0:
        return 0
    return min(n, keep) if keep is not None else max(1, min(n, round(fraction * n)))


class PseudoLabelHistory:
    """Pseudo-label snapshots at `root/e<epoch>/<case>.npy`; the two newest refreshes are kept."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _dir(self, epoch: int) -> Path:
        return self.root / f"e{epoch:04d}"

    def load(self, epoch: int | None, case_id: str) -> np.ndarray | None:
        if epoch is None:
            return None
        path = safe_child(self._dir(epoch), f"{case_id}.npy") if self._dir(epoch).exists() else None
        if path is None or not path.exists():
            return None
        return np.load(path, allow_pickle=False)

    def save(self, epoch: int, case_id: str, label: np.ndarray) -> None:
        d = self._dir(epoch)
        d.mkdir(parents=True, exist_ok=True)
        with atomic_path(safe_child(d, f"{case_id}.npy")) as tmp:
            np.save(tmp, label, allow_pickle=False)

    def prune(self, keep_epochs: set[int]) -> None:
        if not self.root.exists():
            return
        for d in self.root.glob("e[0-9][0-9][0-9][0-9]"):
            if int(d.name[1:]) not in keep_epochs:
                shutil.rmtree(d, ignore_errors=True)


def save_ranking(out_dir: Path, epoch: int, rows: list[dict[str, Any]], selected: set[str], applied: bool) -> Path:
    payload = {"epoch": epoch, "applied": applied, "kept": len(selected), "total": len(rows),
               "ranking": [{**r, "selected": r["case_id"] in selected} for r in rows]}
    text = json.dumps(payload, indent=1)
    path = out_dir / f"ranking_e{epoch:04d}.json"
    atomic_write_text(path, text)
    atomic_write_text(out_dir / "ranking.json", text)
    return path


def new_state() -> dict[str, Any]:
    """UIF's resumable state: the current pool (None: all scans), instability sums, last refresh."""
    return {"pool": None, "history": {}, "last_refresh": None}


def _score_all(epoch: int, nets: list[nn.Module], run: RunContext, ids: list[str], history: PseudoLabelHistory,
               prev_epoch: int | None) -> dict[str, dict[str, Any]]:
    from pipeline.training.validate import predict_probs

    for net in nets:
        net.eval()
    local: dict[str, dict[str, Any]] = {}
    for cid in shard(ids, run.ctx):
        sample = run.source.load(cid, run.spec.sample_stage)
        probs = [predict_probs(n, sample, run.ctx.device, run.policy) for n in nets]
        s = score_scan(probs, history.load(prev_epoch, cid), run.cfg.uif.history_stride)
        history.save(epoch, cid, s.pop("pseudo_label"))
        local[cid] = s
    scores: dict[str, dict[str, Any]] = {}
    for part in gather_objects(local, run.ctx):
        scores.update(part)
    return scores


def refresh(epoch: int, nets: list[nn.Module], run: RunContext, ids: list[str], state: dict[str, Any]) -> list[str]:
    """Score every unlabeled scan, update the instability history in `state` (see `new_state`),
    return the new pool."""
    ucfg = run.cfg.uif
    udir = run.out_dir / "uif"
    history = PseudoLabelHistory(udir / "pseudo_labels")
    prev_epoch = state.get("last_refresh")
    scores = _score_all(epoch, nets, run, ids, history, prev_epoch)
    hist = state["history"]
    for cid, s in sorted(scores.items()):
        if s["instability"] is not None:
            total, n = hist.get(cid, [0.0, 0])
            hist[cid] = [total + s["instability"], n + 1]
    rows = rank_scans(scores, hist, ucfg.alpha)
    start = ucfg.start_epoch or 2 * ucfg.refresh_every
    applied = epoch >= start
    n_keep = select_count(len(rows), ucfg.keep, ucfg.fraction) if applied else len(rows)
    pool = sorted(r["case_id"] for r in rows[:n_keep])
    state.update(last_refresh=epoch, pool=pool if applied else None)
    if run.ctx.is_main:
        save_ranking(udir, epoch, rows, set(pool), applied)
        worst = rows[-1] if rows else {"case_id": "-", "score": float("nan")}
        log.info("%s UIF epoch %d: %s %d/%d unlabeled scans (cut-off U=%.3f; least certain %s U=%.3f)",
                 run.spec.name, epoch, "kept" if applied else f"scored (all used until epoch {start})",
                 len(pool), len(rows), rows[n_keep - 1]["score"] if n_keep else float("nan"),
                 worst["case_id"], worst["score"])
    barrier(run.ctx)
    history.prune({epoch} | ({prev_epoch} if prev_epoch is not None else set()))
    return pool
