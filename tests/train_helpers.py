"""Shared fixtures for the training tests: tiny in-memory FLARE-like samples and a runnable
training entry point for subprocess tests (kill/resume, DDP). Also runnable as a script:

    python tests/train_helpers.py OUT_DIR [--resume] [--sleep-after-epoch N] [--epochs E]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SIZE = (12, 16, 16)
NUM_CLASSES = 3


def make_case(seed: int, labeled: bool = True, corrupt: bool = False, size=SIZE):
    """Two box-shaped 'organs' at random positions on a noisy background."""
    from pipeline.training.data import MemorySample

    rng = np.random.default_rng(seed)
    lab = np.zeros(size, np.uint8)
    for cls, extent in ((1, (5, 6, 6)), (2, (3, 4, 5))):
        start = [int(rng.integers(0, n - e)) for n, e in zip(size, extent, strict=True)]
        lab[tuple(slice(s, s + e) for s, e in zip(start, extent, strict=True))] = cls
    img = np.choose(lab, [0.0, 1.5, -1.5]).astype(np.float32) + rng.normal(0, 0.25, size).astype(np.float32)
    if corrupt:
        img = rng.normal(0, 3.0, size).astype(np.float32)
    return MemorySample(img[None], lab if labeled else None, np.ones(1, bool))


def make_source(n_train: int = 4, n_val: int = 2, n_unl: int = 3, seed: int = 0):
    from pipeline.training.data import MemorySource

    samples, splits = {}, {"train": [], "val": [], "unlabeled": []}
    for split, n, labeled in (("train", n_train, True), ("val", n_val, True), ("unlabeled", n_unl, False)):
        for i in range(n):
            cid = f"{split[0]}{i:02d}"
            samples[cid] = make_case(seed * 1000 + len(samples), labeled)
            splits[split].append(cid)
    return MemorySource(samples, splits)


def make_config(epochs: int = 3, cps: bool = False, uif: bool = False, cutmix: bool = False, **train):
    from pipeline.config import SegpipeConfig

    return SegpipeConfig.model_validate({
        "prepare": {"coarse_size": list(SIZE), "fine_size": list(SIZE)},
        "coarse": {"model": {"channels": [4, 8, 16]},
                   "train": {"epochs": epochs, "batch_size": 2, "unlabeled_batch_size": 2 if cutmix else 1, "lr": 3e-3,
                             "iters_per_epoch": 2, "patch_size": [8, 12, 12]}},
        "fine": {"model": {"channels": [4, 8, 16], "blocks": 1},
                 "train": {"epochs": epochs, "batch_size": 1, "lr": 3e-3, "iters_per_epoch": 2}},
        "train": {"num_threads": 1, "deterministic": True, "warmup_epochs": 0.5,
                  "augment": {"rotate_p": 0.5, "scale_p": 0.5, "flip_axes": [0]},
                  "cps": {"enabled": cps, "rampup_epochs": 1, "cutmix": cutmix}, "uif": {"enabled": uif, "refresh_every": 1}, **train},
    })


def task():
    from pipeline.tasks import TaskSpec

    return TaskSpec("toy", "ct", ("ct",), {1: "big", 2: "small"})


def coarse_spec(config):
    from coarse_seg.train import stage_spec

    return stage_spec(config, task())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--cps", action="store_true")
    ap.add_argument("--cutmix", action="store_true", help="with --cps: CutMix on the unlabeled rows")
    ap.add_argument("--sleep-after-epoch", type=int, default=0)
    ap.add_argument("--ddp", action="store_true", help="under torchrun: dump each rank's weights and cases")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from pipeline.training.trainer import train_stage

    config = make_config(args.epochs, cps=args.cps, uif=args.cps, cutmix=args.cutmix)

    def hook(event: str, info: dict) -> None:
        if event == "epoch_end" and info["epoch"] == args.sleep_after_epoch:
            Path(args.out, "READY").write_text(str(os.getpid()))
            time.sleep(600)  # the test kills us here

    from pipeline.training.distributed import cleanup, init_distributed

    ctx = init_distributed("cpu")
    seen: list[list[str]] = []
    final: dict = {}

    def record(event: str, info: dict) -> None:
        if event == "step":
            seen.append(info["cases"])
        elif event == "train_end":
            final["model"] = info["model"]

    summary = train_stage(coarse_spec(config), make_source(n_train=8), config.train, args.out, ctx=ctx,
                          resume=args.resume, callbacks=[hook, record])
    if args.ddp:
        from safetensors.torch import save_file

        from pipeline.training.checkpoint import latest_checkpoint

        assert latest_checkpoint(Path(args.out)) is not None or ctx.rank != 0
        # the live weights of this rank, straight from its process
        save_file({k: v.contiguous() for k, v in final["model"].state_dict().items()},
                  str(Path(args.out, f"rank{ctx.rank}.safetensors")))
        Path(args.out, f"cases_rank{ctx.rank}.json").write_text(json.dumps(seen))
    cleanup(ctx)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
