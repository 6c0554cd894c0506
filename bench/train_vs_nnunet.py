#!/usr/bin/env python
"""Benchmark (not a test): segpipe's training beside nnU-Net v2's on the same synthetic FLARE-like CT.

One `segpipe synth flare` set (N labeled training scans + K held-out labeled scans, small size) is
trained by both systems, one CPU core each (`taskset`), and both predict the held-out raw images
through their own inference; `segpipe evaluate flare` scores both in the original image space.

- **nnU-Net v2** (2.8.1) through its own CLI entry points (`nnUNetv2_plan_and_preprocess`,
  `nnUNetv2_train ... -device cpu`, `nnUNetv2_predict`), installed by this script into a throwaway
  venv (`OUT/nnunet_venv`), never a segpipe dependency. Its default plan for this data (patch
  64×128×128, 31 M parameters) needs ~18 s per iteration on these cores, so it trains an extra
  configuration `3d_reduced` written into its plans file: the default plan's first stages with
  features 8–64 and patch 32×64×64 — segpipe's network width and patch. What is reduced is only
  that; everything else is nnU-Net's recipe (SGD 0.01 Nesterov 0.99 + poly, Dice+CE with deep
  supervision, foreground oversampling 0.33, its augmentation, 50 validation iterations per epoch,
  mirror TTA and Gaussian sliding windows at inference). The trainer subclass
  `nnUNetTrainer_SegpipeBudget` sets epochs = budget / 250 iterations, so the poly schedule ends
  inside the budget, saves snapshots for the learning curve, and skips the final 5-fold-validation
  prediction (held-out scoring is done here). The entry points run with `multiprocessing.cpu_count`
  made affinity-aware, so nnU-Net starts one torch thread on its one core instead of two (on CPU it
  sets `torch.set_num_threads(cpu_count())`); augmentation runs in-process (`nnUNet_n_proc_DA=0`).
- **segpipe** through its CLI (`segpipe prepare`, `segpipe train coarse|fine --export`, `segpipe
  predict`), fully supervised, same fold (5-fold, fold 0: the same number of training scans as
  nnU-Net's fold 0), with the recipe in `RECIPES`. Iterations = coarse + fine steps.

    python bench/train_vs_nnunet.py --out runs/vs_nnunet                      # both, budgets 3000 and 8000
    python bench/train_vs_nnunet.py --out runs/vs_nnunet --systems nnunet --budgets 8000
    python bench/train_vs_nnunet.py --out runs/vs_nnunet --report             # table + plot from what exists
    python bench/train_vs_nnunet.py --quick                                   # a few minutes: checks the plumbing

Every run writes OUT/<system>/<budget>/result.json when it finishes; reruns skip finished runs, so
the two systems and the budgets can be started separately (e.g. side by side on two cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NNUNET_PIN = "nnunetv2==2.8.1"
# nnunetv2 → dynamic-network-architectures → timm → torchvision, which imports only beside torch
# 2.14.1 here (the machine's local wheels); segpipe runs 2.13.0. Both on the CPU.
NNUNET_DEPS = ["torch==2.14.1", "torchvision==0.29.1"]
DATASET_ID, DATASET_NAME = 501, "Dataset501_SynthFLARE"
REDUCED = "3d_reduced"
ITERS_PER_EPOCH_NNUNET = 250
TRAINER = "nnUNetTrainer_SegpipeBudget"

TRAINER_SOURCE = f'''"""segpipe benchmark: nnU-Net's own trainer, shortened to a budget (bench/train_vs_nnunet.py)."""
import os

import torch
from batchgenerators.utilities.file_and_folder_operations import join

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class {TRAINER}(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = max(1, int(os.environ["SEGPIPE_BENCH_ITERATIONS"]) // self.num_iterations_per_epoch)
        self.snapshot_epochs = {{int(e) for e in os.environ.get("SEGPIPE_BENCH_SNAPSHOTS", "").split(",") if e}}

    def on_epoch_end(self):
        done = self.current_epoch + 1
        super().on_epoch_end()
        if done in self.snapshot_epochs and done != self.num_epochs:
            self.save_checkpoint(join(self.output_folder, f"checkpoint_it{{done * self.num_iterations_per_epoch}}.pth"))

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("segpipe bench: final validation skipped (held-out scans are scored by segpipe)")
'''

# The entry points nnUNetv2_* call, with cpu_count made affinity-aware (see the module docstring).
NNUNET_ENTRY = (
    "import multiprocessing, os, sys; multiprocessing.cpu_count = lambda: len(os.sched_getaffinity(0)); "
    "from {module} import {func}; sys.argv = sys.argv[1:]; sys.exit({func}())"
)

# segpipe's recipe per name: `--set` overrides on top of configs/flare.yaml. `prepare` keys go to
# `segpipe prepare`, the rest to `segpipe train`; {coarse_epochs}/{fine_epochs} are filled in.
RECIPES: dict[str, dict[str, list[str]]] = {
    # the previous session's benchmark settings (bench/train_phantom.py): whole 32×64×64 samples
    "phantom": {
        "prepare": ["prepare.coarse_size=[32,64,64]", "prepare.fine_size=[32,64,64]"],
        "train": ["coarse.model.channels=[8,16,32,64]", "fine.model.channels=[8,16,32,64]", "fine.model.blocks=1",
                  "fine.roi_jitter_mm=0", "coarse.train.lr=3e-3", "fine.train.lr=3e-3"],
    },
    # native-resolution fine stage trained on 32×64×64 patches (nnU-Net's sampling), deep supervision
    "native": {
        "prepare": ["prepare.coarse_size=[32,64,64]", "prepare.fine_spacing=[4.5,3.1,3.1]"],
        "train": ["coarse.model.channels=[8,16,32,64]", "fine.model.channels=[8,16,32,64]", "fine.model.blocks=1",
                  "fine.roi_jitter_mm=0", "coarse.train.lr=3e-3", "fine.train.lr=3e-3",
                  "fine.train.patch_size=[32,64,64]", "fine.model.deep_supervision=true"],
    },
}
# "native" without the nnU-Net pieces configs/flare.yaml opts into: segpipe's default augmentation
# (rotation ±10°, zoom ±10 %, intensity jitter, no mirroring) and foreground patches centred on any
# organ voxel instead of a uniformly drawn organ: the recipe of the 8,000-iteration run.
RECIPES["native_plain"] = {
    "prepare": RECIPES["native"]["prepare"],
    "train": [*RECIPES["native"]["train"], "train.augment.flip_axes=[]", "train.augment.rotate_deg=10",
              "train.augment.rotate_axes=all", "train.augment.scale=0.1", "train.augment.intensity_p=0.5",
              *(f"train.augment.{k}_p=0" for k in ("noise", "blur", "brightness", "contrast", "lowres",
                                                   "gamma_inverted", "gamma")),
              "coarse.train.fg_sampling=voxel", "fine.train.fg_sampling=voxel"],
}
# the semi-supervised row's segpipe modes: overrides on top of the recipe (CPS/UIF off in COMMON_TRAIN).
# The unlabeled pool is small (~13 scans) and the fine stage short, so UIF refreshes every 5 epochs from
# epoch 10 and keeps the more certain half (CSSN's 200 of 2000 is for a pool 150× larger).
SEMI_MODES: dict[str, list[str]] = {
    "labeled": [],
    "cps": ["train.cps.enabled=true", "train.cps.rampup_epochs=10"],
    "cps_uif": ["train.cps.enabled=true", "train.cps.rampup_epochs=10", "train.uif.enabled=true",
                "train.uif.refresh_every=5", "train.uif.start_epoch=10", "train.uif.fraction=0.5"],
}
# CPS+UIF with CutMix on the unlabeled patches (the CPS paper's strongest variant, train.cps.cutmix)
SEMI_MODES["cps_uif_cutmix"] = [*SEMI_MODES["cps_uif"], "train.cps.cutmix=true"]
COMMON_TRAIN = ["coarse.train.batch_size=2", "fine.train.batch_size=2", "train.num_threads=1", "train.workers=0",
                "train.channels_last=true", "train.warmup_epochs=1", "train.val_every=2", "train.keep_checkpoints=1000",
                "train.cps.enabled=false", "train.cps.cutmix=false", "train.uif.enabled=false"]


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/vs_nnunet")
    ap.add_argument("--train", type=int, default=18, help="labeled training scans (default 18)")
    ap.add_argument("--test", type=int, default=4, help="held-out labeled scans (default 4)")
    ap.add_argument("--size", choices=["small", "full"], default="small")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--budgets", default="3000,8000", help="training iterations per run, comma-separated")
    ap.add_argument("--systems", default="nnunet,segpipe")
    ap.add_argument("--recipe", default="native", choices=sorted(RECIPES))
    ap.add_argument("--tag", default=None, help="segpipe run folder name (default: the recipe's), e.g. to compare code versions")
    ap.add_argument("--coarse-share", type=float, default=0.2, help="segpipe: share of the iterations for the coarse stage")
    ap.add_argument("--steps-per-epoch", type=int, default=50, help="segpipe iterations per epoch")
    ap.add_argument("--snapshots", default="1000,2000,3000,5000",
                    help="learning-curve points (iterations) saved inside longer runs")
    ap.add_argument("--cpu", default=None, help="taskset CPU list for the training processes (e.g. 0 or 1)")
    ap.add_argument("--nnunet-venv", default=None, help="an existing venv with nnunetv2 (default: OUT/nnunet_venv, built)")
    ap.add_argument("--report", action="store_true", help="only print the table and write the plot from finished runs")
    ap.add_argument("--quick", action="store_true", help="4+2 scans, budgets 250 (checks the plumbing)")
    ap.add_argument("--semi", type=float, default=None, metavar="FRACTION",
                    help="semi-supervised row: this share of the training scans labeled, the rest unlabeled "
                         "(OUT/semi); segpipe labeled-only vs CPS vs CPS+UIF, nnU-Net on the labeled share")
    ap.add_argument("--semi-modes", default=",".join(SEMI_MODES), help="segpipe modes of the --semi row")
    args = ap.parse_args()
    if args.quick:
        args.train, args.test, args.budgets, args.snapshots, args.steps_per_epoch = 6, 2, "250", "", 25
    return args


# ---- shared -------------------------------------------------------------------------------------
def run(cmd: list[str], log: Path, env: dict[str, str] | None = None, cpu: str | None = None) -> float:
    """Run a command with output to `log`; returns its wall time; fails loudly with the log's tail."""
    if cpu is not None:
        cmd = ["taskset", "-c", cpu, *cmd]
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with log.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"{cmd[0 if cpu is None else 3]} failed (exit {rc}); last lines of {log}:\n{tail}")
    return time.time() - t0


def make_data(args: argparse.Namespace, out: Path) -> Path:
    from pipeline.synth.dataset import write_flare_dataset

    data = out / "data"
    if not (data / "synth.json").is_file():
        write_flare_dataset(data, cases=args.train, validation=args.test, seed=args.seed, size=args.size,
                            force=True, workers=2)
    return data


def make_semi_data(data: Path, out: Path, fraction: float) -> Path:
    """OUT/semi/data: the first `fraction` of the training scans with labels, the others in unlabeled/
    (hard links, their labels left out), the same held-out scans."""
    semi = out / "data"
    if (semi / "semi.json").is_file():
        return semi
    images = sorted((data / "images").glob("*_0000.nii.gz"))
    n_labeled = max(2, round(fraction * len(images)))
    for sub in ("images", "labels", "unlabeled", "validation", "validation_labels"):
        (semi / sub).mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        if i < n_labeled:
            os.link(img, semi / "images" / img.name)
            label = img.name.replace("_0000.nii.gz", ".nii.gz")
            os.link(data / "labels" / label, semi / "labels" / label)
        else:
            os.link(img, semi / "unlabeled" / img.name)
    for sub in ("validation", "validation_labels"):
        for f in sorted((data / sub).glob("*.nii.gz")):
            os.link(f, semi / sub / f.name)
    write_result(semi / "semi.json", {"fraction": fraction, "labeled": n_labeled, "unlabeled": len(images) - n_labeled})
    return semi


def score(pred: Path, data: Path, dest: Path) -> dict[str, Any]:
    """`segpipe evaluate flare` on the held-out labels, in the original image space."""
    run([*segpipe_cmd(), "evaluate", "flare", "--pred", str(pred), "--gt", str(data / "validation_labels"),
         "--json", str(dest), "--workers", "1"], dest.with_suffix(".log"))
    return json.loads(dest.read_text())


def summarise(metrics: dict[str, Any]) -> dict[str, Any]:
    """Mean DSC/NSD (the mean of the organ means) and per organ, from `segpipe evaluate flare --json`."""
    organs = {name: {"dsc": m["dsc"], "nsd": m["nsd"]} for name, m in metrics["mean"].items()}
    return {"mean_dsc": metrics["overall"]["dsc"], "mean_nsd": metrics["overall"]["nsd"], "organs": organs}


def write_result(path: Path, result: dict[str, Any]) -> None:
    from pipeline.fsutil import atomic_write_text

    atomic_write_text(path, json.dumps(result, indent=1))


# ---- nnU-Net -----------------------------------------------------------------------------------
def nnunet_python(args: argparse.Namespace, out: Path) -> Path:
    venv = Path(args.nnunet_venv) if args.nnunet_venv else out / "nnunet_venv"
    py = venv / "bin" / "python"
    if not (venv / ".segpipe_ready").exists():
        log = out / "logs" / "nnunet_venv.log"
        run([sys.executable, "-m", "venv", str(venv)], log)
        run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *NNUNET_DEPS, NNUNET_PIN], log)
        (venv / ".segpipe_ready").touch()
    site = subprocess.check_output([str(py), "-c", "import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))"],
                                   text=True).strip()
    trainer = Path(site) / "training" / "nnUNetTrainer" / "variants" / "segpipe_bench.py"
    if not trainer.exists() or trainer.read_text() != TRAINER_SOURCE:
        trainer.write_text(TRAINER_SOURCE)
    return py


def nnunet_env(out: Path) -> dict[str, str]:
    root = out / "nnunet"
    return {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
            "nnUNet_results": str(root / "results"), "nnUNet_n_proc_DA": "0", "nnUNet_compile": "false",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def nnunet_entry(py: Path, module: str, func: str, argv: list[str]) -> list[str]:
    return [str(py), "-c", NNUNET_ENTRY.format(module=module, func=func), func, *argv]


def nnunet_dataset(data: Path, out: Path) -> Path:
    """nnU-Net raw layout: imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz, imagesTs, dataset.json."""
    from pipeline.tasks import get_task

    raw = out / "nnunet" / "raw" / DATASET_NAME
    if (raw / "dataset.json").is_file():
        return raw
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (raw / sub).mkdir(parents=True, exist_ok=True)
    for img in sorted((data / "images").glob("*_0000.nii.gz")):
        os.link(img, raw / "imagesTr" / img.name)
        label = data / "labels" / img.name.replace("_0000.nii.gz", ".nii.gz")
        os.link(label, raw / "labelsTr" / label.name)
    for img in sorted((data / "validation").glob("*_0000.nii.gz")):
        os.link(img, raw / "imagesTs" / img.name)
    labels = get_task("flare").labels
    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, **{labels[i]: i for i in sorted(labels) if i}},
               "numTraining": len(list((raw / "labelsTr").glob("*.nii.gz"))), "file_ending": ".nii.gz"}
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return raw


def reduce_plan(plans_file: Path, features: list[int], patch: list[int]) -> dict[str, Any]:
    """Add configuration `3d_reduced` to nnUNetPlans.json: the default plan's first len(features)
    stages (its own kernel sizes and strides), features `features`, patch `patch`."""
    plans = json.loads(plans_file.read_text())
    full = plans["configurations"]["3d_fullres"]
    kw = full["architecture"]["arch_kwargs"]
    n = len(features)
    strides = kw["strides"][:n]
    for axis in range(3):
        total = 1
        for s in strides:
            total *= s[axis]
        if patch[axis] % total:
            raise SystemExit(f"reduced patch {patch} is not divisible by the plan's strides {strides}")
    arch = json.loads(json.dumps(full["architecture"]))
    arch["arch_kwargs"].update(n_stages=n, features_per_stage=features, kernel_sizes=kw["kernel_sizes"][:n],
                               strides=strides, n_conv_per_stage=kw["n_conv_per_stage"][:n],
                               n_conv_per_stage_decoder=kw["n_conv_per_stage_decoder"][:n - 1])
    plans["configurations"][REDUCED] = {"inherits_from": "3d_fullres", "patch_size": patch, "architecture": arch}
    plans_file.write_text(json.dumps(plans, indent=1))
    return {"default_patch": full["patch_size"], "default_features": kw["features_per_stage"],
            "reduced_patch": patch, "reduced_features": features, "strides": strides,
            "spacing": full["spacing"], "batch_size": full["batch_size"]}


def nnunet_prepare(args: argparse.Namespace, data: Path, out: Path) -> tuple[Path, dict[str, Any]]:
    py = nnunet_python(args, out)
    env = nnunet_env(out)
    nnunet_dataset(data, out)
    plans_file = out / "nnunet" / "preprocessed" / DATASET_NAME / "nnUNetPlans.json"
    info_file = out / "nnunet" / "plan.json"
    if not info_file.is_file():
        t = run(nnunet_entry(py, "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints",
                             "plan_and_preprocess_entry",
                             ["-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "1", "--verify_dataset_integrity"]),
                out / "logs" / "nnunet_plan.log", {**env, "nnUNet_n_proc_DA": "1"}, args.cpu)  # 0 breaks planning
        info = reduce_plan(plans_file, [8, 16, 32, 64], [32, 64, 64])
        info["plan_and_preprocess_s"] = t
        info_file.write_text(json.dumps(info, indent=1))
    return py, json.loads(info_file.read_text())


def write_small_split(data: Path, out: Path) -> None:
    """Fewer than 5 labeled scans (the --semi row): nnU-Net cannot make its 5-fold split, so fold 0
    is given as splits_final.json — segpipe's fold 0 (data_prepare.splits, prepare.seed 0)."""
    from data_prepare.splits import assign_folds

    ids = sorted(p.name.removesuffix(".nii.gz") for p in (data / "labels").glob("*.nii.gz"))
    dest = out / "nnunet" / "preprocessed" / DATASET_NAME / "splits_final.json"
    if len(ids) >= 5 or dest.is_file():
        return
    fold = assign_folds(ids, 5, 0)
    dest.write_text(json.dumps([{"train": [c for c in ids if fold[c] != 0], "val": [c for c in ids if fold[c] == 0]}],
                               indent=1))


def nnunet_predict(py: Path, out: Path, env: dict[str, str], checkpoint: str, dest: Path, cpu: str | None) -> float:
    if dest.exists():
        shutil.rmtree(dest)
    return run(nnunet_entry(py, "nnunetv2.inference.predict_from_raw_data", "predict_entry_point",
                            ["-i", str(out / "nnunet" / "raw" / DATASET_NAME / "imagesTs"), "-o", str(dest),
                             "-d", str(DATASET_ID), "-c", REDUCED, "-f", "0", "-tr", TRAINER, "-chk", checkpoint,
                             "-device", "cpu", "-npp", "1", "-nps", "1"]),
               dest.parent / "predict.log", env, cpu)


def nnunet_run(args: argparse.Namespace, data: Path, out: Path, budget: int) -> None:
    done = out / "nnunet" / str(budget) / "result.json"
    if done.is_file():
        return
    py, plan = nnunet_prepare(args, data, out)
    env = {**nnunet_env(out), "SEGPIPE_BENCH_ITERATIONS": str(budget),
           "SEGPIPE_BENCH_SNAPSHOTS": ",".join(str(s // ITERS_PER_EPOCH_NNUNET) for s in snapshots(args, budget))}
    # one results folder per budget: nnUNet_results is per run
    env["nnUNet_results"] = str(out / "nnunet" / str(budget) / "results")
    run_dir = out / "nnunet" / str(budget)
    timing = run_dir / "train_s.json"  # training finished: only predict and score again
    write_small_split(data, out)
    if not timing.is_file():
        t = run(nnunet_entry(py, "nnunetv2.run.run_training", "run_training_entry",
                             [str(DATASET_ID), REDUCED, "0", "-tr", TRAINER, "-device", "cpu"]),
                run_dir / "train.log", env, args.cpu)
        write_result(timing, {"train_s": t})
    t_train = json.loads(timing.read_text())["train_s"]
    pred = run_dir / f"pred_{budget}"
    t_pred = nnunet_predict(py, out, env, "checkpoint_final.pth", pred, args.cpu)
    point = {"iterations": budget, "predict_s_per_case": t_pred / args.test,
             **summarise(score(pred, data, run_dir / f"metrics_{budget}.json"))}
    write_result(done, {"system": "nnU-Net v2.8.1", "plan": f"{REDUCED} (patch {plan['reduced_patch']}, features "
                        f"{plan['reduced_features']}, {len(plan['strides'])} stages)", "iterations": budget,
                        "train_s": t_train, "points": [point], **point, "plan_info": plan})


def nnunet_curve(args: argparse.Namespace, data: Path, out: Path, budget: int) -> None:
    """Learning-curve points inside a finished nnU-Net run (its snapshot checkpoints), latest first:
    nnU-Net's CPU inference with mirror TTA takes minutes per checkpoint."""
    run_dir = out / "nnunet" / str(budget)
    done = run_dir / "result.json"
    if not done.is_file():
        return
    py, _ = nnunet_prepare(args, data, out)
    env = {**nnunet_env(out), "nnUNet_results": str(run_dir / "results")}
    for it in sorted(snapshots(args, budget), reverse=True):
        result = json.loads(done.read_text())
        if it in {p["iterations"] for p in result["points"]}:
            continue
        pred = run_dir / f"pred_{it}"
        t_pred = nnunet_predict(py, out, env, f"checkpoint_it{it}.pth", pred, args.cpu)
        result["points"].append({"iterations": it, "predict_s_per_case": t_pred / args.test,
                                 **summarise(score(pred, data, run_dir / f"metrics_{it}.json"))})
        result["points"].sort(key=lambda p: p["iterations"])
        write_result(done, result)


# ---- segpipe -----------------------------------------------------------------------------------
def segpipe_cmd() -> list[str]:
    return [sys.executable, "-m", "pipeline"]


def segpipe_prepare(args: argparse.Namespace, data: Path, out: Path) -> Path:
    work = out / "segpipe" / f"work_{args.tag or args.recipe}"
    if not (work / ".prepared").exists():
        sets = [x for p in [*RECIPES[args.recipe]["prepare"], "prepare.folds=5", "prepare.workers=1"]
                for x in ("--set", p)]
        run([*segpipe_cmd(), "prepare", "--data", str(data), "--work", str(work), "--config", "flare", *sets],
            out / "logs" / f"segpipe_prepare_{args.tag or args.recipe}.log", cpu=args.cpu)
        (work / ".prepared").touch()
    return work


def split_steps(args: argparse.Namespace, budget: int) -> tuple[int, int]:
    """(coarse, fine) steps of a segpipe budget: `--coarse-share` of it, whole epochs."""
    coarse = round(budget * args.coarse_share / args.steps_per_epoch) * args.steps_per_epoch
    return coarse, budget - coarse


def segpipe_run(args: argparse.Namespace, data: Path, out: Path, budget: int, mode: str | None = None,
                coarse_from: Path | None = None) -> Path:
    """One segpipe run (OUT/segpipe/<tag>_<budget>); `mode` adds SEMI_MODES overrides; `coarse_from`
    (a finished run) lends its trained coarse stage, so only the fine stage differs between runs."""
    tag = (args.tag or args.recipe) + (f"_{mode}" if mode else "")
    run_dir = out / "segpipe" / f"{tag}_{budget}"
    done = run_dir / "result.json"
    if done.is_file():
        return run_dir
    work = segpipe_prepare(args, data, out)
    spe = args.steps_per_epoch
    coarse_steps, fine_steps = split_steps(args, budget)
    sets = [*RECIPES[args.recipe]["train"], *COMMON_TRAIN, *SEMI_MODES.get(mode or "labeled", []),
            f"coarse.train.epochs={coarse_steps // spe}", f"fine.train.epochs={fine_steps // spe}",
            f"coarse.train.iters_per_epoch={spe}", f"fine.train.iters_per_epoch={spe}"]
    sets_args = [x for p in sets for x in ("--set", p)]
    weights = run_dir / "weights"
    own = run_dir / "work"  # a copy of the prepared folder: train/<stage> is per run
    if not own.exists():
        shutil.copytree(work, own, ignore=shutil.ignore_patterns("train"))
    timing = run_dir / "train_s.json"  # training finished: only package, predict and score again
    times = json.loads(timing.read_text()) if timing.is_file() else {}
    if coarse_from is not None and "coarse" not in times:
        shutil.rmtree(own / "train" / "coarse", ignore_errors=True)
        shutil.copytree(coarse_from / "work" / "train" / "coarse", own / "train" / "coarse")
        times["coarse"] = json.loads((coarse_from / "train_s.json").read_text())["coarse"]
        write_result(timing, times)
    for stage in ("coarse", "fine"):
        if stage in times:
            continue
        times[stage] = run([*segpipe_cmd(), "train", stage, "--work", str(own), "--device", "cpu",
                            "--config", "flare", *sets_args],
                           run_dir / f"train_{stage}.log", {"SEGPIPE_PROGRESS": "0"}, args.cpu)
        write_result(timing, times)
    from pipeline.weights import package_work

    package_work(own, weights, fp16=False)  # both stages' best checkpoints + manifest, as `segpipe package`
    pred = run_dir / "pred"
    if pred.exists():
        shutil.rmtree(pred)
    t_pred = run([*segpipe_cmd(), "predict", "-i", str(data / "validation"), "-o", str(pred), "--weights", str(weights),
                  "--device", "cpu", "--mode", "flare"], run_dir / "predict.log",
                 {"SEGPIPE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}, args.cpu)
    metrics = summarise(score(pred, data, run_dir / "metrics.json"))
    point = {"iterations": budget, "predict_s_per_case": t_pred / args.test, **metrics}
    shared = f" (coarse of {coarse_from.name})" if coarse_from is not None else ""
    write_result(done, {"system": "segpipe", "tag": tag,
                        "plan": f"recipe {args.recipe}: coarse {coarse_steps}{shared} + fine {fine_steps}",
                        "iterations": budget, "train_s": times["coarse"] + times["fine"], "train_split_s": times,
                        "points": [point], **point, "overrides": sets})
    return run_dir


def segpipe_semi(args: argparse.Namespace, data: Path, out: Path, budget: int) -> None:
    """The semi-supervised row: labeled-only first (its coarse stage is then shared), CPS, CPS+UIF.
    Without `labeled` in --semi-modes this process waits for another one's labeled-only coarse
    stage, so the modes can train side by side on two cores."""
    modes = args.semi_modes.split(",")
    if "labeled" in modes:
        labeled = segpipe_run(args, data, out, budget, "labeled")
    else:
        labeled = out / "segpipe" / f"{args.tag or args.recipe}_labeled_{budget}"
        print(f"waiting for the labeled-only run's coarse stage in {labeled}", flush=True)
        while "coarse" not in (json.loads((labeled / "train_s.json").read_text())
                               if (labeled / "train_s.json").is_file() else {}):
            time.sleep(30)
    for mode in modes:
        if mode != "labeled":
            segpipe_run(args, data, out, budget, mode, coarse_from=labeled)


def segpipe_curve(args: argparse.Namespace, data: Path, out: Path, budget: int) -> None:
    """Learning-curve points inside a finished segpipe run: the fine network as it was after
    `--snapshots` iterations (the epoch checkpoint, not the best-on-validation one) with the run's
    coarse network, predicted and scored like the final model."""
    from safetensors.torch import load_file, save_file

    from pipeline.weights import read_manifest, write_manifest

    run_dir = out / "segpipe" / f"{args.tag or args.recipe}_{budget}"
    done = run_dir / "result.json"
    if not done.is_file():
        return
    result = json.loads(done.read_text())
    coarse_steps, _ = split_steps(args, budget)
    have = {p["iterations"] for p in result["points"]}
    manifest = read_manifest(run_dir / "weights")
    for it in snapshots(args, budget):
        epoch, rest = divmod(it - coarse_steps, args.steps_per_epoch)
        ckpt = run_dir / "work" / "train" / "fine" / "checkpoints" / f"epoch_{epoch:04d}" / "model.safetensors"
        if it in have or rest or epoch < 1 or not ckpt.is_file():
            continue
        snap = run_dir / f"weights_{it}"
        snap.mkdir(exist_ok=True)
        for name in ("coarse.safetensors", "coarse.json", "fine.json"):
            shutil.copy2(run_dir / "weights" / name, snap / name)
        tensors = {k.removeprefix("nets.0."): v for k, v in load_file(str(ckpt)).items() if k.startswith("nets.0.")}
        save_file(tensors, str(snap / "fine.safetensors"), metadata={"stage": "fine", "dtype": "float32"})
        write_manifest(snap, name=snap.name, task=manifest["task"], preprocessing=manifest["preprocessing"])
        pred = run_dir / f"pred_{it}"
        if pred.exists():
            shutil.rmtree(pred)
        t_pred = run([*segpipe_cmd(), "predict", "-i", str(data / "validation"), "-o", str(pred), "--weights", str(snap),
                      "--device", "cpu", "--mode", "flare"], run_dir / "predict.log",
                     {"SEGPIPE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}, args.cpu)
        result["points"].append({"iterations": it, "predict_s_per_case": t_pred / args.test,
                                 **summarise(score(pred, data, run_dir / f"metrics_{it}.json"))})
    result["points"].sort(key=lambda p: p["iterations"])
    write_result(done, result)


def snapshots(args: argparse.Namespace, budget: int) -> list[int]:
    return [s for s in (int(v) for v in args.snapshots.split(",") if v) if s < budget and s % ITERS_PER_EPOCH_NNUNET == 0]


# ---- report ------------------------------------------------------------------------------------
def name(r: dict[str, Any]) -> str:
    return f"{r['system']} [{r['tag']}]" if r.get("tag") else r["system"]


def report(out: Path) -> None:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*/*/result.json"))]
    rows.sort(key=lambda r: (r["iterations"], r["system"], r.get("tag", "")))
    if not rows:
        print(f"no finished runs under {out}")
        return
    print(f"# held-out scans scored by `segpipe evaluate flare` in original image space ({out})")
    print("| system | plan | iterations | train wall | predict / case | mean DSC | mean NSD |")
    print("|---|---|--:|--:|--:|--:|--:|")
    for r in rows:
        print(f"| {name(r)} | {r['plan']} | {r['iterations']:,} | {r['train_s'] / 60:.0f} min | "
              f"{r['predict_s_per_case']:.1f} s | {r['mean_dsc']:.3f} | {r['mean_nsd']:.3f} |")
    print("\n| learning curve (DSC / NSD) | iterations | mean DSC | mean NSD |")
    print("|---|--:|--:|--:|")
    for r in rows:
        for pt in r["points"]:
            print(f"| {name(r)}, budget {r['iterations']:,} | {pt['iterations']:,} | {pt['mean_dsc']:.3f} | "
                  f"{pt['mean_nsd']:.3f} |")
    organs = list(rows[0]["organs"])
    print("\n| organ DSC / NSD | " + " | ".join(f"{name(r)} {r['iterations']:,}" for r in rows) + " |")
    print("|---|" + "--:|" * len(rows))
    for o in organs:
        cells = [r["organs"].get(o, {}) for r in rows]
        print(f"| {o} | " + " | ".join(f"{c.get('dsc', float('nan')):.2f} / {c.get('nsd', float('nan')):.2f}"
                                       for c in cells) + " |")
    plot(rows, out / "learning_curve.png")


def plot(rows: list[dict[str, Any]], dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for metric, ax in zip(("mean_dsc", "mean_nsd"), axes, strict=True):
        for r in rows:
            pts = sorted(r["points"], key=lambda p: p["iterations"])
            style = "o--" if r["system"].startswith("nnU-Net") else "s-"
            ax.plot([p["iterations"] for p in pts], [p[metric] for p in pts], style,
                    label=f"{name(r)}, budget {r['iterations']:,}")
        ax.set_xlabel("training iterations (segpipe: coarse + fine)")
        ax.set_ylabel(metric.replace("mean_", "mean ").upper().replace("MEAN", "mean"))
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("held-out synthetic FLARE-like CT, original image space, one CPU core per system")
    fig.tight_layout()
    fig.savefig(dest, dpi=100)
    print(f"learning curve: {dest}")


def main() -> int:
    args = parse()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.semi is not None and not args.report:
        data = make_data(args, out)
        semi_out = out / "semi"
        semi_data = make_semi_data(data, semi_out, args.semi)
        for budget in (int(b) for b in args.budgets.split(",")):
            for system in args.systems.split(","):
                t0 = time.time()
                if system == "nnunet":
                    nnunet_run(args, semi_data, semi_out, budget)
                else:
                    segpipe_semi(args, semi_data, semi_out, budget)
                print(f"semi {system} {budget}: done in {(time.time() - t0) / 60:.1f} min", flush=True)
        report(semi_out)
        return 0
    if not args.report:
        data = make_data(args, out)
        for budget in (int(b) for b in args.budgets.split(",")):
            for system in args.systems.split(","):
                t0 = time.time()
                if system == "nnunet":
                    nnunet_run(args, data, out, budget)
                    nnunet_curve(args, data, out, budget)
                else:
                    segpipe_run(args, data, out, budget)
                    segpipe_curve(args, data, out, budget)
                print(f"{system} {budget}: done in {(time.time() - t0) / 60:.1f} min", flush=True)
    report(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
