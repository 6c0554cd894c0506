"""Which coarse grid does the localiser need? Box recall and final DSC per grid (issue #16).

    .venv/bin/python bench/coarse_grid.py --out runs/vs_nnunet \
        --variants 32x64x64:8-16-32-64,32x64x64:16-32-64-128-256,48x96x96:8-16-32-64,64x128x128:8-16-32-64 \
        [--steps 600] [--fine-from native_8000] [--full 4] [--cpu 1]

Runs inside a finished `bench/train_vs_nnunet.py` output folder (its data, its `native_plain`
recipe). For each variant (coarse grid z×y×x : channels) the coarse stage is prepared and
trained from scratch for `--steps` iterations with the recipe's settings; the fine stage is not
retrained: every variant gets the same trained fine network (`--fine-from`, a finished run whose
fine samples were prepared identically), so the rows differ only in the localiser. Each variant
is then scored on the benchmark's held-out scans and on `--full` unseen full-size CTs
(512²×80–200, another seed):

- box recall: the share of each organ's voxels inside the ROI box `segpipe predict` cuts
  (`Predictor.roi`: the coarse foreground box + margin), its mean over organs and cases and its
  minimum over organ × case (a localiser is as good as its worst box);
- the final mean DSC/NSD of `segpipe predict` + `segpipe evaluate flare` in original image space;
- the coarse forward time per case (1 thread) and the network's parameter count.

One core per process (`--cpu`); the wall times share the machine with whatever else runs.
Results: OUT/coarse_grid/<variant>/result.json and a table printed at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import train_vs_nnunet as tv  # noqa: E402  (the benchmark whose data, recipe and helpers this reuses)

RECIPE = "native_plain"


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/vs_nnunet", help="a bench/train_vs_nnunet.py output folder")
    ap.add_argument("--variants", default="32x64x64:8-16-32-64,48x96x96:8-16-32-64,64x128x128:8-16-32-64")
    ap.add_argument("--steps", type=int, default=600, help="coarse training iterations per variant")
    ap.add_argument("--steps-per-epoch", type=int, default=50)
    ap.add_argument("--fine-from", default="native_8000", help="OUT/segpipe/<run> whose fine stage every variant uses")
    ap.add_argument("--full", type=int, default=4, help="unseen full-size CTs scored besides the held-out scans")
    ap.add_argument("--full-seed", type=int, default=7)
    ap.add_argument("--cpu", default=None, help="taskset CPU list for the training/predict processes")
    ap.add_argument("--report", action="store_true", help="only print the table of finished variants")
    return ap.parse_args()


def parse_variant(text: str) -> tuple[list[int], list[int]]:
    grid, _, channels = text.partition(":")
    return [int(v) for v in grid.split("x")], [int(v) for v in (channels or "8-16-32-64").split("-")]


def full_data(args: argparse.Namespace, base: Path) -> Path:
    from pipeline.synth.dataset import write_flare_dataset

    data = base / "full_data"
    if not (data / "synth.json").is_file():
        write_flare_dataset(data, cases=1, validation=args.full, seed=args.full_seed, size="full", force=True, workers=2)
    return data


def box_recall(weights: Path, data: Path) -> list[dict[str, Any]]:
    """Per held-out case: each organ's share of voxels inside the ROI box, and the coarse forward time."""
    import numpy as np
    import torch

    from data_prepare.process import normalise
    from pipeline.case_images import read_case_images
    from pipeline.config import PredictSection
    from pipeline.inference.engine import Predictor
    from pipeline.weights import load_weights

    torch.set_num_threads(1)
    pred = Predictor(load_weights(weights, torch.device("cpu")), torch.device("cpu"), PredictSection())
    tol = pred.prep.geometry_tolerance
    rows = []
    for image_path in sorted((data / "validation").glob("*_0000.nii.gz")):
        case = image_path.name.removesuffix("_0000.nii.gz")
        loaded = read_case_images(case, {"ct": image_path}, tol)
        gt = np.asarray(read_case_images(case, {"ct": data / "validation_labels" / f"{case}.nii.gz"}, tol)
                        .channels["ct"]).astype(np.uint8)
        image, _, _ = normalise(loaded, pred.task, pred.prep)
        t = time.perf_counter()
        roi, _ = pred.roi(image, np.ones(1, bool), loaded.shape, loaded.spacing_zyx)
        seconds = time.perf_counter() - t
        inside = np.zeros_like(gt)
        if roi.box is not None:
            sl = tuple(slice(lo, hi) for lo, hi in roi.box)
            inside[sl] = gt[sl]
        organs = {}
        for c in (int(v) for v in np.unique(gt) if v):
            organs[pred.task.labels[c]] = float((inside == c).sum() / (gt == c).sum())
        rows.append({"case": case, "recall": organs, "coarse_s": seconds,
                     "roi_fraction": 0.0 if roi.box is None else
                     float(np.prod([hi - lo for lo, hi in roi.box]) / np.prod(loaded.shape))})
    return rows


def run_variant(args: argparse.Namespace, out: Path, grid: list[int], channels: list[int], full: Path) -> dict:
    import torch

    from pipeline.weights import load_weights, package_work

    name = f"{'x'.join(map(str, grid))}_c{'-'.join(map(str, channels))}"
    base = out / "coarse_grid"
    run_dir = base / name
    done = run_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    data = out / "data"
    prep_sets = [*tv.RECIPES[RECIPE]["prepare"], "prepare.folds=5", "prepare.workers=1",
                 f"prepare.coarse_size=[{','.join(map(str, grid))}]"]
    work = base / f"work_{'x'.join(map(str, grid))}"
    if not (work / ".prepared").exists():
        tv.run([*tv.segpipe_cmd(), "prepare", "--data", str(data), "--work", str(work), "--config", "flare",
                *[x for p in prep_sets for x in ("--set", p)]], base / "logs" / f"prepare_{work.name}.log", cpu=args.cpu)
        (work / ".prepared").touch()
    own = run_dir / "work"
    if not own.exists():
        shutil.copytree(work, own, ignore=shutil.ignore_patterns("train"))
    timing = run_dir / "train_s.json"
    if not timing.is_file():
        spe = args.steps_per_epoch
        sets = [*tv.RECIPES[RECIPE]["train"], *tv.COMMON_TRAIN, f"coarse.model.channels=[{','.join(map(str, channels))}]",
                f"coarse.train.epochs={args.steps // spe}", f"coarse.train.iters_per_epoch={spe}"]
        seconds = tv.run([*tv.segpipe_cmd(), "train", "coarse", "--work", str(own), "--device", "cpu", "--config", "flare",
                          *[x for p in sets for x in ("--set", p)]], run_dir / "train_coarse.log",
                         {"SEGPIPE_PROGRESS": "0"}, args.cpu)
        tv.write_result(timing, {"coarse": seconds})
    fine_src = out / "segpipe" / args.fine_from / "work" / "train" / "fine"
    if not (own / "train" / "fine").exists():
        shutil.copytree(fine_src, own / "train" / "fine", ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    weights = run_dir / "weights"
    package_work(own, weights, fp16=False)
    params = sum(p.numel() for p in load_weights(weights, torch.device("cpu")).stages["coarse"].model.parameters())
    result: dict[str, Any] = {"grid": grid, "channels": channels, "coarse_params": params, "steps": args.steps,
                              "fine_from": args.fine_from, "coarse_train_s": json.loads(timing.read_text())["coarse"]}
    for label, folder in (("heldout", data), ("full", full)):
        pred = run_dir / f"pred_{label}"
        shutil.rmtree(pred, ignore_errors=True)
        tv.run([*tv.segpipe_cmd(), "predict", "-i", str(folder / "validation"), "-o", str(pred), "--weights",
                str(weights), "--device", "cpu", "--mode", "flare"], run_dir / f"predict_{label}.log",
               {"SEGPIPE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}, args.cpu)
        metrics = tv.summarise(tv.score(pred, folder, run_dir / f"metrics_{label}.json"))
        rows = box_recall(weights, folder)
        recalls = [r for row in rows for r in row["recall"].values()]
        result[label] = {"mean_dsc": metrics["mean_dsc"], "mean_nsd": metrics["mean_nsd"],
                         "box_recall_mean": statistics.fmean(recalls), "box_recall_min": min(recalls),
                         "coarse_s_median": statistics.median(r["coarse_s"] for r in rows),
                         "roi_fraction_median": statistics.median(r["roi_fraction"] for r in rows),
                         "cases": rows, "organs": metrics["organs"]}
    tv.write_result(done, result)
    return result


def table(results: list[dict]) -> str:
    lines = ["| coarse grid | channels | params | train s | held-out recall mean / min | held-out DSC | "
             "full-size recall mean / min | full-size DSC / NSD | coarse s (full, 1 thread) | ROI share |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in results:
        h, f = r["heldout"], r["full"]
        lines.append(f"| {'×'.join(map(str, r['grid']))} | {'-'.join(map(str, r['channels']))} | "
                     f"{r['coarse_params'] / 1e6:.2f} M | {r['coarse_train_s']:.0f} | "
                     f"{h['box_recall_mean']:.4f} / {h['box_recall_min']:.3f} | {h['mean_dsc']:.3f} | "
                     f"{f['box_recall_mean']:.4f} / {f['box_recall_min']:.3f} | {f['mean_dsc']:.3f} / {f['mean_nsd']:.3f} | "
                     f"{f['coarse_s_median']:.2f} | {f['roi_fraction_median']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    args = parse()
    out = Path(args.out).resolve()
    if not (out / "segpipe" / args.fine_from / "work" / "train" / "fine").is_dir():
        raise SystemExit(f"{out}/segpipe/{args.fine_from}: no trained fine stage; run bench/train_vs_nnunet.py first")
    variants = [parse_variant(v) for v in args.variants.split(",")]
    results = []
    if args.report:
        for d in sorted((out / "coarse_grid").glob("*/result.json")):
            results.append(json.loads(d.read_text()))
    else:
        full = full_data(args, out / "coarse_grid")
        for grid, channels in variants:
            t = time.time()
            results.append(run_variant(args, out, grid, channels, full))
            print(f"{grid} {channels}: done in {time.time() - t:.0f} s", flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
