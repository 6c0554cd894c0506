#!/usr/bin/env python
"""Benchmark (not a test): missing-modality training methods on small synthetic BraTS, CPU.

Synthetic BraTS-like cases (pipeline.synth, "small" = 2.5 mm) → per modality z-score inside
the brain → a 48³ box (120 mm) around the tumour, resampled to `--size`³ → training cases get
fixed availability at imbalanced missing rates (flair 0.6, t1 0.2, t1ce 0.4, t2 0.8; PASSION's
mr2468), validation and test cases are complete. Then baseline (zero-filled missing inputs, no
dropout) and ShaSpec, LCKD, PASSION, HGA are trained through the real engine
(pipeline.training.trainer.train_stage via fine_seg.train.stage_spec) with the same network
widths, steps and seed, and each is evaluated on every one of the 15 modality subsets of the
test cases (evaluation/subsets.py). Prints the 15-subset mean Dice (and HD95) per region and
method side by side, and writes every table (JSON/Markdown) under --out.

    python bench/missing_modality.py --out runs/bench_missing            # defaults below
    python bench/missing_modality.py --quick                             # a smoke run

Each model trains in its own process with one thread (`--jobs` at a time): on a loaded
2-core machine one thread per process is several times faster than two (thread contention).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RATES = {"flair": 0.6, "t1": 0.2, "t1ce": 0.4, "t2": 0.8}
METHODS = ("baseline", "shaspec", "lckd", "passion", "hga")
# relative training cost per step (measured): the longest jobs start first so that the pool packs well
COST = {"baseline": 1.0, "lckd": 1.4, "shaspec": 2.6, "passion": 2.8, "hga": 2.9}


def _case(seed: int, size: int) -> tuple:
    """(image [4,S,S,S] float32, label [S,S,S] uint8) for one synthetic case."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from pipeline.synth import make_brats_case
    from pipeline.tasks import BRATS_MODALITIES

    c = make_brats_case(seed, "small")
    img = np.stack([c.images[m].astype(np.float32) for m in BRATS_MODALITIES])
    brain = img.sum(0) > 0
    for ch in img:
        v = ch[brain]
        ch[brain] = (v - v.mean()) / max(float(v.std()), 1e-6)
        ch[~brain] = 0
    box = 48
    centre = [round(float(a.mean())) for a in np.nonzero(c.label)]
    sl = []
    for ax, ctr in enumerate(centre):
        n = c.label.shape[ax]
        lo = min(max(ctr - box // 2, 0), max(n - box, 0))
        sl.append(slice(lo, lo + box))
    img, lab = img[(slice(None), *sl)], c.label[tuple(sl)]
    pad = [(0, box - s) for s in lab.shape]
    img = np.pad(img, [(0, 0), *pad])
    lab = np.pad(lab, pad)
    if size != box:
        t = torch.from_numpy(img)[None]
        img = F.interpolate(t, size=(size,) * 3, mode="trilinear", align_corners=False)[0].numpy()
        oh = F.one_hot(torch.from_numpy(lab).long(), 4).permute(3, 0, 1, 2)[None].float()
        lab = F.interpolate(oh, size=(size,) * 3, mode="trilinear", align_corners=False)[0].argmax(0).numpy()
    return img.astype(np.float32), lab.astype(np.uint8)


def _case_job(args: tuple) -> tuple:
    import torch

    torch.set_num_threads(1)
    return _case(*args)


def make_data(n_train: int, n_val: int, n_test: int, size: int, seed: int, cache: Path, jobs: int) -> dict:
    import numpy as np

    from fine_seg.missing.subsets import imbalanced_masks

    path = cache / f"brats_missing_{n_train}_{n_val}_{n_test}_{size}_{seed}.npz"
    n = n_train + n_val + n_test
    if path.exists():
        z = np.load(path, allow_pickle=False)
        images, labels = z["images"], z["labels"]
    else:
        seeds = [(seed * 1000 + i, size) for i in range(n)]
        if jobs > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(jobs) as pool:
                out = pool.map(_case_job, seeds)
        else:
            out = [_case(*s) for s in seeds]
        images = np.stack([o[0] for o in out])
        labels = np.stack([o[1] for o in out])
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, images=images, labels=labels)
        os.replace(tmp, path)
    ids = [f"case{i:03d}" for i in range(n)]
    train, val, test = ids[:n_train], ids[n_train:n_train + n_val], ids[n_train + n_val:]
    masks = imbalanced_masks(train, RATES, seed=seed)
    return {"images": images, "labels": labels, "ids": ids, "train": train, "val": val, "test": test, "masks": masks}


def _config(method: str, args: argparse.Namespace) -> object:
    from pipeline.config import SegpipeConfig

    fine_method = "plain" if method == "baseline" else method
    return SegpipeConfig.model_validate({
        "task": {"name": "brats"},
        "prepare": {"fine_size": [args.size] * 3},
        "fine": {
            "method": fine_method,
            "model": {"channels": args.channels, "blocks": 1, "decoder_blocks": 1, "context_reduction": 2,
                      "deep_supervision": True, "mask_channels": False},
            "train": {"epochs": args.epochs, "iters_per_epoch": args.iters, "batch_size": args.batch,
                      "lr": args.lr, "fg_oversample": 0.0},
            "missing": {"shaspec": {"specific_channels": [max(2, c // 2) for c in args.channels]},
                        "lckd": {"elect_every": max(1, args.epochs // 4)},
                        "passion": {"eta_growth_every": max(1, args.epochs // 3)},
                        "hga": {"eta_growth_every": max(1, args.epochs // 3)}}.get(fine_method),
        },
        "train": {"seed": args.seed, "num_threads": 1, "warmup_epochs": 1, "val_every": args.epochs,
                  "keep_checkpoints": 1, "grad_clip": 12.0,
                  "augment": {"enabled": True, "flip_axes": [0, 1, 2], "rotate_p": 0.0, "scale_p": 0.0,
                              "intensity_p": 0.5}},
    })


def train_and_eval(method: str, args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    from evaluation.subsets import SubsetCase, evaluate_subsets, markdown_table, write_outputs
    from fine_seg import build_model
    from fine_seg.train import stage_spec
    from pipeline.tasks import get_task
    from pipeline.training.data import MemorySample, MemorySource
    from pipeline.training.trainer import train_stage

    data = make_data(args.train, args.val, args.test, args.size, args.seed, Path(args.cache), 1)
    samples = {}
    for i, cid in enumerate(data["ids"]):
        mask = data["masks"].get(cid, np.ones(4, bool))
        samples[cid] = MemorySample(data["images"][i] * mask[:, None, None, None], data["labels"][i], mask)
    source = MemorySource(samples, {"train": data["train"], "val": data["val"]})
    cfg = _config(method, args)
    spec = stage_spec(cfg, get_task("brats"))
    out = Path(args.out) / method
    t0 = time.time()
    train_stage(spec, source, cfg.train, out / "train")
    train_s = time.time() - t0
    net = build_model(spec.model_config)
    net.load_state_dict(load_file(str(out / "train" / "best.safetensors")))
    net.eval()
    spacing = (2.5 * 48 / args.size,) * 3
    cases = [SubsetCase(cid, data["labels"][data["ids"].index(cid)], spacing, np.ones(4, bool),
                        data["images"][data["ids"].index(cid)]) for cid in data["test"]]

    @torch.inference_mode()
    def predict(case: SubsetCase, mask: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(case.data * mask[:, None, None, None])[None]
        return net(x, torch.from_numpy(mask)[None]).argmax(1)[0].numpy().astype(np.uint8)

    t1 = time.time()
    res = evaluate_subsets(predict, cases)
    res["method"] = method
    res["train_seconds"] = train_s
    res["eval_seconds"] = time.time() - t1
    res["steps"] = args.epochs * args.iters
    write_outputs(res, json_path=out / "subsets.json", markdown_path=out / "subsets.md")
    print(f"\n## {method} (train {train_s:.0f} s)\n" + markdown_table(res), flush=True)
    return {"method": method, "mean": res["mean_over_subsets"], "train_seconds": train_s,
            "eval_seconds": res["eval_seconds"]}


def _job(payload: tuple) -> dict:
    method, ns = payload
    return train_and_eval(method, argparse.Namespace(**ns))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench_missing")
    p.add_argument("--cache", default="runs/bench_cache")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--train", type=int, default=24)
    p.add_argument("--val", type=int, default=4)
    p.add_argument("--test", type=int, default=8)
    p.add_argument("--size", type=int, default=32, help="crop edge in voxels (48³ at 2.5 mm resampled to this)")
    p.add_argument("--channels", type=lambda s: [int(v) for v in s.split(",")], default=[8, 16, 32])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--iters", type=int, default=15)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="models trained at once (one thread each)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny data, 2 epochs")
    args = p.parse_args()
    if args.quick:
        args.train, args.val, args.test, args.epochs, args.iters, args.size = 6, 2, 2, 2, 4, 24
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            p.error(f"unknown method {m!r} ({', '.join(METHODS)})")
    import torch

    torch.set_num_threads(1)
    started = time.time()
    make_data(args.train, args.val, args.test, args.size, args.seed, Path(args.cache), args.jobs)
    data_s = time.time() - started
    load = os.getloadavg()
    ns = vars(args)
    if args.jobs > 1:
        import multiprocessing as mp

        longest_first = sorted(methods, key=lambda m: -COST[m])
        with mp.get_context("spawn").Pool(args.jobs) as pool:
            done = dict(zip(longest_first, pool.map(_job, [(m, ns) for m in longest_first], chunksize=1), strict=True))
        rows = [done[m] for m in methods]
    else:
        rows = [train_and_eval(m, args) for m in methods]
    total = time.time() - started
    load_end = os.getloadavg()
    base = next((r for r in rows if r["method"] == "baseline"), None)
    lines = [f"missing-modality benchmark: {args.train} train (missing rates {RATES}) / {args.val} val / "
             f"{args.test} test cases, {args.size}³ crops, channels {args.channels}, {args.epochs}×{args.iters} steps "
             f"of batch {args.batch}, {args.jobs} job(s) × 1 thread",
             "15-subset mean Dice (HD95 mm) on the complete test cases",
             "| method | Dice ET | Dice TC | Dice WT | Dice mean | Δ vs baseline | HD95 ET | HD95 TC | HD95 WT | train s |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    summary = []
    for r in rows:
        d = [r["mean"][k]["dice"] for k in ("ET", "TC", "WT")]
        h = [r["mean"][k]["hd95"] for k in ("ET", "TC", "WT")]
        avg = sum(d) / 3
        delta = avg - sum(base["mean"][k]["dice"] for k in ("ET", "TC", "WT")) / 3 if base else float("nan")
        lines.append(f"| {r['method']} | {d[0]:.4f} | {d[1]:.4f} | {d[2]:.4f} | {avg:.4f} | {delta:+.4f} | "
                     f"{h[0]:.1f} | {h[1]:.1f} | {h[2]:.1f} | {r['train_seconds']:.0f} |")
        summary.append({**r, "dice_mean": avg, "delta_vs_baseline": delta})
    lines.append(f"data {data_s:.0f} s, total wall {total:.0f} s; load average {load[0]:.1f} at start, "
                 f"{load_end[0]:.1f} at end, {os.cpu_count()} cores")
    best = max(summary, key=lambda r: r["dice_mean"])
    lines.append(f"best by 15-subset mean Dice: {best['method']}")
    text = "\n".join(lines)
    print("\n" + text)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "summary.md").write_text(text + "\n")
    (Path(args.out) / "summary.json").write_text(json.dumps({"args": ns, "rows": summary, "total_seconds": total,
                                                              "load": [load, load_end]}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
