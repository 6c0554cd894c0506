"""Regenerate the shipped demo weights from synthetic data, reproducibly.

    .venv/bin/python model_weights/regenerate.py flare [--work runs/demo_weights] [--cases 24]
    .venv/bin/python model_weights/regenerate.py brats

synth (fixed seeds, mixed header orientations) → `segpipe prepare` → `segpipe train coarse` →
`segpipe train fine` → fp16 safetensors + manifest in model_weights/<task>_demo/. The configs
are model_weights/demo/<task>.yaml; training runs on the CPU with fixed seeds and 2 threads.
The BraTS coarse localiser trains with random modality dropout (`modality_dropout_loader`)
through the plain network's modality-mask input; the fine stage trains with `fine.method` of the
config (ShaSpec, the best method by bench/missing_modality.py) or, with `method: plain`, the
plain network with the same random modality dropout.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ORIENTATIONS = ("lps", "ras", "permuted", "oblique")


def modality_dropout_loader(stage: str, p_drop: float = 0.5, roi_jitter_mm: float = 0.0, roi_jitter_p: float = 0.5):
    """Training loader of `stage`: with probability p_drop, a random non-empty strict subset of the
    modalities is kept and the others are zeroed and marked missing (ShaSpec's random mode).
    Fine stage with roi_jitter_mm > 0: with probability roi_jitter_p the ROI margin of each side
    is redrawn within ± roi_jitter_mm (SampleStore.fine_crop), so that the network tolerates the
    coarse stage's boxes at inference."""
    import numpy as np

    def load(source, case_id: str, seed: int):
        rng = np.random.default_rng(seed ^ 0xD80F)
        if stage == "fine" and roi_jitter_mm > 0 and rng.random() < roi_jitter_p:
            sample = source.fine_crop(case_id, jitter_mm=roi_jitter_mm, rng=rng)
        else:
            sample = source.load(case_id, stage)
        n = len(sample.modality_mask)
        if n < 2 or rng.random() >= p_drop:
            return sample
        keep = np.zeros(n, bool)
        keep[rng.choice(n, size=int(rng.integers(1, n)), replace=False)] = True
        mask = np.asarray(sample.modality_mask, bool) & keep
        if not mask.any():
            return sample
        image = np.array(sample.image, dtype=np.float32)
        image[~mask] = 0.0
        sample.image, sample.modality_mask = image, mask
        return sample

    return load


def plain_fine_spec(cfg, task):
    """The fine stage with the plain shared-encoder network (modality mask input), built here
    rather than by fine_seg.train so that the demo stays on the plain interface; multi-modal
    tasks get random modality dropout."""
    from pipeline.training.trainer import StageSpec

    st = cfg.fine.train.model_copy()
    if st.patch_size is None:
        st.patch_size = cfg.prepare.fine_size
    info = {"task": task.name, "modalities": list(task.modalities), "labels": {str(k): v for k, v in task.labels.items()},
            "sample_size": cfg.prepare.fine_size, "roi_margin_mm": cfg.prepare.fine_margin_mm}
    jitter = float(cfg.fine.roi_jitter_mm)
    drop = 0.5 if len(task.modalities) > 1 else 0.0
    loader = None
    if drop or jitter:
        loader = modality_dropout_loader("fine", drop, jitter, float(cfg.fine.roi_jitter_p))
        info.update(modality_dropout=drop, roi_jitter_mm=jitter)
    model_config = {"in_channels": len(task.modalities), "num_classes": task.num_classes,
                    **cfg.fine.model.model_dump(mode="json")}
    return StageSpec(name="fine", model_config=model_config, train=st, num_classes=task.num_classes,
                     sample_stage="fine", loader=loader, info=info)


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
    from pipeline.training.export import stage_dir
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
    from pipeline.commands.train import resolve_config
    from pipeline.samples import SampleStore
    from pipeline.tasks import get_task
    from pipeline.training.distributed import init_distributed
    from pipeline.training.trainer import train_stage

    for stage in ("coarse", "fine"):
        if stage not in stages:
            continue
        store = SampleStore(prepared)
        cfg = resolve_config(store, str(cfg_path), [])
        task = get_task(cfg.task.name)
        if stage == "coarse":
            from coarse_seg.train import stage_spec

            spec = stage_spec(cfg, task)
            if len(task.modalities) > 1:  # the localiser must work on any modality subset too
                spec.loader = modality_dropout_loader("coarse", 0.3)
                spec.info["modality_dropout"] = 0.3
        elif cfg.fine.method == "plain":
            spec = plain_fine_spec(cfg, task)
        else:  # a missing-modality method: its own dropout schedule, CSSN's ROI jitter
            from fine_seg.train import stage_spec as fine_stage_spec

            spec = fine_stage_spec(cfg, task, store)
        summary = train_stage(spec, store, cfg.train, stage_dir(prepared, stage), ctx=init_distributed("cpu"))
        log.info("%s: best validation Dice %s at epoch %s (%.0f s so far)", stage, summary["best_dice"],
                 summary["best_epoch"], time.perf_counter() - t0)
    if "package" in stages:
        dest = Path(args.dest or ROOT / "model_weights" / f"{args.task}_demo")
        manifest = package_work(prepared, dest, name=dest.name, fp16=True,
                                extra={"trained_on": f"{n} synthetic {args.task} cases (model_weights/regenerate.py)"})
        size = sum(p.stat().st_size for p in dest.iterdir())
        log.info("package: %s (%.2f MB)", manifest, size / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
