"""Regenerate the shipped demo weights from synthetic data, reproducibly.

    .venv/bin/python model_weights/regenerate.py flare [--work runs/demo_weights] [--cases 24]
    .venv/bin/python model_weights/regenerate.py brats

synth (fixed seeds, mixed header orientations) → `segpipe prepare` → `segpipe train coarse` →
`segpipe train fine` (the stage commands a user runs, nothing set up here) → fp16 safetensors +
manifest in model_weights/<task>_demo/. The configs are model_weights/demo/<task>.yaml; training
runs on the CPU with fixed seeds. The BraTS coarse localiser trains with random modality dropout
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["flare", "brats"])
    parser.add_argument("--work", default=None, help="scratch folder (default runs/demo_weights/<task>)")
    parser.add_argument("--cases", type=int, default=None, help="synthetic training cases (flare 24, brats 16)")
    parser.add_argument("--dest", default=None, help="output folder (default model_weights/<task>_demo)")
    parser.add_argument("--stages", default="synth,prepare,coarse,fine,package")
    args = parser.parse_args(argv)

    from pipeline.config import load_config
    from pipeline.inference.synthetic import write_brats_dataset, write_flare_dataset
    from pipeline.log import get_logger, setup_logging
    from pipeline.weights import package_work

    setup_logging()
    log = get_logger("demo-weights")
    work = Path(args.work or ROOT / "runs" / "demo_weights" / args.task)
    data, prepared = work / "data", work / "work"
    cfg_path = ROOT / "model_weights" / "demo" / f"{args.task}.yaml"
    config = load_config(cfg_path)
    stages = set(args.stages.split(","))
    n = args.cases or (24 if args.task == "flare" else 16)
    t0 = time.perf_counter()
    if "synth" in stages:
        seeds = list(range(1000, 1000 + n))
        if args.task == "flare":
            write_flare_dataset(data, seeds, orientations=ORIENTATIONS)
        else:
            write_brats_dataset(data, seeds, orientations=ORIENTATIONS)
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
                                extra={"trained_on": f"{n} synthetic {args.task} cases (model_weights/regenerate.py)"})
        size = sum(p.stat().st_size for p in dest.iterdir())
        log.info("package: %s (%.2f MB)", manifest, size / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
