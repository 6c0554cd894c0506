"""What a person (and TensorBoard) sees of a training run: one line at the start, one per epoch.

Only the main process logs and writes `tensorboard/events.out.tfevents.*`. The epoch line and the
scalars are built from the epoch's metrics: the engine's (loss, sup, lr, val_dice, time) and
whatever the step strategy reported (CPS weight and pool, a method's loss terms).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.log import get_logger
from pipeline.training.distributed import DistContext
from pipeline.training.tb import ScalarWriter

log = get_logger("train")
_ENGINE_KEYS = ("epoch", "loss", "sup", "lr", "val_dice", "time_s")


def _scalars(prefix: str, values: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out |= _scalars(f"{prefix}{k}/", v)
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _extras(metrics: dict[str, Any]) -> str:
    items = []
    for k, v in metrics.items():
        if k in _ENGINE_KEYS:
            continue
        if isinstance(v, dict):
            items += [f"{k2} {_fmt(v2)}" for k2, v2 in v.items()]
        else:
            items.append(f"{k} {_fmt(v)}")
    return ", ".join(items)


class EpochLogger:
    def __init__(self, name: str, epochs: int, out_dir: Path, ctx: DistContext) -> None:
        self.name, self.epochs, self.main = name, epochs, ctx.is_main
        self.writer = ScalarWriter(out_dir / "tensorboard") if self.main else None

    def start(self, text: str) -> None:
        if self.main:
            log.info("%s: %s", self.name, text)

    def epoch(self, m: dict[str, Any], state: dict[str, Any]) -> None:
        if not self.main:
            return
        parts = [f"{self.name} epoch {m['epoch']}/{self.epochs}", f"loss {m['loss']:.4f}"]
        extras = _extras(m)
        parts.append(f"(sup {m['sup']:.4f}{', ' + extras if extras else ''})")
        parts.append(f"lr {m['lr']:.2e}")
        if "val_dice" in m:
            parts.append("val " + "/".join(f"{d:.4f}" for d in m["val_dice"]))
        if state["best_dice"] is not None:
            parts.append(f"best {state['best_dice']:.4f}@{state['best_epoch']}")
        parts.append(f"{m['time_s']:.1f}s")
        log.info(" ".join(parts))
        scalars = _scalars("train/", {k: v for k, v in m.items() if k not in ("epoch", "val_dice", "time_s")})
        scalars["time/epoch_s"] = m["time_s"]
        for i, d in enumerate(m.get("val_dice", [])):
            scalars[f"val/dice_net{i}"] = d
        assert self.writer is not None
        self.writer.add(m["epoch"], scalars)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
