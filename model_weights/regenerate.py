"""Regenerate the shipped demo weights from synthetic data, reproducibly.

    .venv/bin/python model_weights/regenerate.py flare [--work runs/demo_weights] [--cases 18]
    .venv/bin/python model_weights/regenerate.py brats

synth → `segpipe prepare` → `segpipe train coarse` → `segpipe train fine` (the stage commands a user
runs, nothing set up here) → fp16 safetensors + manifest in model_weights/<task>_demo/, which
records the training data (synthetic, generator, seed). The configs are
model_weights/demo/<task>.yaml; training runs on the CPU with fixed seeds. FLARE: the data of
bench/train_vs_nnunet.py (`segpipe synth flare --cases 18 --seed 1`, small), fold 0 — the shipped
weights are that benchmark's 8,000-iteration run. BraTS: fixed seeds, mixed header orientations. The BraTS coarse localiser trains with random modality dropout
(`coarse.modality_dropout`); the fine stage with `fine.method` of the config (ShaSpec, the best
method by bench/missing_modality.py) or, with `method: plain`, `fine.modality_dropout`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ORIENTATIONS = ("lps", "ras", "permuted", "oblique")
FLARE_SEED = 1  # bench/train_vs_nnunet.py's data set


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["flare", "brats"])
    parser.add_argument("--work", default=None, help="scratch folder (default runs/demo_weights/<task>)")
    parser.add_argument("--cases", type=int, default=None, help="synthetic training cases (flare 18, brats 64)")
    parser.add_argument("--dest", default=None, help="output folder (default model_weights/<task>_demo)")
    parser.add_argument("--stages", default="synth,prepare,coarse,fine,package")
    args = parser.parse_args(argv)

    from pipeline.config import load_config
    from pipeline.inference.synthetic import write_brats_dataset as write_brats_case_folders
    from pipeline.log import get_logger, setup_logging
    from pipeline.synth import write_flare_dataset
    from pipeline.weights import package_work

    setup_logging()
    log = get_logger("demo-weights")
    work = Path(args.work or ROOT / "runs" / "demo_weights" / args.task)
    data, prepared = work / "data", work / "work"
    cfg_path = ROOT / "model_weights" / "demo" / f"{args.task}.yaml"
    config = load_config(cfg_path)
    stages = set(args.stages.split(","))
    n = args.cases or (18 if args.task == "flare" else 64)
    t0 = time.perf_counter()
    training_data: dict[str, object] = {"synthetic": True, "generator": "segpipe synth", "kind": args.task, "cases": n,
                                        "size": "small"}
    if args.task == "flare":
        training_data |= {"seed": FLARE_SEED, "orientation": "lps"}
    else:
        training_data |= {"seeds": [1000, 1000 + n - 1], "orientation": list(ORIENTATIONS)}
    if "synth" in stages:
        if args.task == "flare":
            write_flare_dataset(data, cases=n, seed=FLARE_SEED, size="small", workers=2)
        else:
            write_brats_case_folders(data, list(range(1000, 1000 + n)), orientations=ORIENTATIONS)
        log.info("synth: %d %s cases in %s (%.0f s)", n, args.task, data, time.perf_counter() - t0)
    if "prepare" in stages:
        from data_prepare.runner import print_summary, run_prepare

        print_summary(run_prepare(data, prepared, config.prepare, task=args.task))
    from pipeline.cli import main as segpipe

    for stage in ("coarse", "fine"):  # exactly `segpipe train <stage>`, as a user runs it
        if stage not in stages:
            continue
        rc = segpipe(["train", stage, "--work", str(prepared), "--config", str(cfg_path), "--device", "cpu"])
        if rc:
            log.error("%s: segpipe train failed (exit %d)", stage, rc)
            return rc
        log.info("%s: trained (%.0f s so far)", stage, time.perf_counter() - t0)
    if "package" in stages:
        dest = Path(args.dest or ROOT / "model_weights" / f"{args.task}_demo")
        manifest = package_work(prepared, dest, name=dest.name, fp16=True,
                                extra={"trained_on": f"{n} synthetic {args.task} cases (model_weights/regenerate.py)",
                                       "training_data": training_data})
        size = sum(p.stat().st_size for p in dest.iterdir())
        log.info("package: %s (%.2f MB)", manifest, size / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
