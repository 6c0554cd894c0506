"""The whole pipeline on embedded synthetic data, through the stage graph (`segpipe run`'s local
backend): synth → prepare → train coarse → train fine (FLARE: CPS + UIF over unlabeled scans;
BraTS: ShaSpec with imbalanced missing modalities) → export → predict on held-out cases →
postprocess → evaluate → package. Writes OUT/{flare,brats}/ (data, config, work), OUT/report.html,
OUT/submissions/{flare,brats}.zip. Sized for ~5 minutes on 2 CPU cores: tiny networks and a few
epochs, so the metrics are low; they are real predictions scored by the organisers' metrics.
Rerunning skips what is done (and resumes an interrupted stage)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# Derived from model_weights/demo/<task>.yaml (the shipped demo weights' configs), with far
# fewer epochs: training is most of the demo's time budget.
FLARE_CONFIG: dict[str, Any] = {
    "task": {"name": "flare"},
    "prepare": {"coarse_size": [16, 32, 32], "fine_size": [24, 48, 48], "fine_margin_mm": 20.0,
                "fine_jitter_mm": 20.0, "label_resampling": "nearest", "folds": 5, "workers": 2},
    "coarse": {"model": {"channels": [8, 16, 32], "blocks": 1},
               "train": {"epochs": 8, "iters_per_epoch": 10, "batch_size": 2, "unlabeled_batch_size": 1,
                         "lr": 0.01}},
    "fine": {"model": {"channels": [8, 16, 32, 64], "blocks": 1, "decoder_blocks": 1},
             "train": {"epochs": 10, "batch_size": 2, "unlabeled_batch_size": 1, "lr": 0.003}},
    "train": {"fold": 0, "seed": 0, "num_threads": 1, "warmup_epochs": 1, "val_every": 5,
              "cps": {"enabled": True, "rampup_epochs": 4},
              "uif": {"enabled": True, "refresh_every": 3, "start_epoch": 3, "fraction": 0.5},
              "augment": {"enabled": True, "rotate_p": 0.0, "scale_p": 0.2}},
}
BRATS_CONFIG: dict[str, Any] = {
    "task": {"name": "brats", "label_convention": "2023"},
    "prepare": {"coarse_size": [24, 32, 32], "fine_size": [24, 32, 32], "fine_margin_mm": 10.0,
                "fine_jitter_mm": 10.0, "folds": 5, "workers": 2},
    "coarse": {"model": {"channels": [8, 16, 32], "blocks": 1}, "train": {"epochs": 24, "batch_size": 2, "lr": 0.003}},
    "fine": {"model": {"channels": [8, 16, 32], "blocks": 1, "decoder_blocks": 1},
             "train": {"epochs": 12, "batch_size": 2, "lr": 0.003}, "method": "shaspec"},
    "train": {"fold": 0, "seed": 0, "num_threads": 1, "warmup_epochs": 1, "val_every": 4,
              "augment": {"enabled": True, "rotate_p": 0.0, "scale_p": 0.2}},
}
FLARE_DATA = {"cases": 8, "unlabeled": 4, "validation": 2}
BRATS_DATA = {"cases": 10, "test": 3, "missing_rates": "flair=0.1,t1=0.4,t1ce=0.3,t2=0.2"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", metavar="DIR", help="where everything is written")
    parser.add_argument("--tasks", default="flare,brats", help="comma-separated: flare, brats (default both)")
    parser.add_argument("--epochs-scale", type=float, default=1.0, metavar="F",
                        help="multiply every stage's epochs (e.g. 3 for better numbers, slower)")


def _write_config(path: Path, config: dict[str, Any], scale: float) -> Path:
    import copy

    import yaml

    from pipeline.fsutil import atomic_write_text

    cfg = copy.deepcopy(config)
    for stage in ("coarse", "fine"):
        cfg[stage]["train"]["epochs"] = max(1, round(cfg[stage]["train"]["epochs"] * scale))
    text = "# written by `segpipe demo`: tiny networks, few epochs (see pipeline/commands/demo.py)\n"
    text += yaml.safe_dump(cfg, sort_keys=False)
    if not path.is_file() or path.read_text() != text:  # same bytes → the stage keys stay valid
        atomic_write_text(path, text)
    return path


def _synth_flare(root: Path) -> None:
    from pipeline.synth import write_flare_dataset

    data = root / "data"
    if not (data / "synth.json").is_file():
        write_flare_dataset(data, seed=0, size="small", workers=2, **FLARE_DATA)


def _synth_brats(root: Path) -> None:
    """Training set with imbalanced missing modalities; a held-out set (another seed) split into
    the challenge's input layout (case folders, seg removed) and a ground-truth folder."""
    import shutil

    from pipeline.fsutil import check_case_id
    from pipeline.synth import write_brats_dataset

    data, held = root / "data", root / "heldout"
    if not (data / "synth.json").is_file():
        write_brats_dataset(data, cases=BRATS_DATA["cases"], seed=0, size="small", workers=2,
                            missing_rates=BRATS_DATA["missing_rates"])
    if (root / "input").is_dir() and (root / "gt").is_dir():
        return
    if not (held / "synth.json").is_file():
        write_brats_dataset(held, cases=BRATS_DATA["test"], seed=1000, size="small", workers=2,
                            missing_rates=BRATS_DATA["missing_rates"])
    inp, gt = root / "input.part", root / "gt.part"
    for d in (inp, gt):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    for case in sorted(p for p in held.iterdir() if p.is_dir()):
        cid = check_case_id(case.name)
        (inp / cid).mkdir()
        for f in sorted(case.iterdir()):
            if f.name == f"{cid}-seg.nii.gz":
                shutil.copy2(f, gt / f"{cid}.nii.gz")
            else:
                shutil.copy2(f, inp / cid / f.name)
    inp.rename(root / "input")
    gt.rename(root / "gt")


def _headline(task: str, metrics: dict[str, Any]) -> dict[str, float]:
    overall = metrics.get("overall") or {}
    if task == "flare":
        return {"mean DSC": overall.get("dsc", float("nan")), "mean NSD": overall.get("nsd", float("nan"))}
    mean = metrics.get("mean") or {}
    return {f"Dice {r}": (mean.get(r) or {}).get("dice", float("nan")) for r in ("ET", "TC", "WT")}


def _report_page(out: Path, rows: list[dict[str, Any]]) -> Path:
    """One self-contained page: headline metrics beside each task's median-case overlay (what the
    task's evaluation report saved, evaluation/overlay.py), so the first screen shows numbers and
    pictures, then each task's full report inline (iframe srcdoc: no external assets, opens offline)."""
    import html

    from evaluation.overlay import FIRST_SCREEN_CSS, load_overlay
    from pipeline.fsutil import atomic_write_text

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>segpipe demo</title><style>",
             "body{font-family:system-ui,sans-serif;margin:16px auto;max-width:1250px;padding:0 16px;color:#1d2330}"
             "h1{margin:0 0 4px}h2{margin:10px 0 6px}"
             "table{border-collapse:collapse}th,td{border:1px solid #d6dbe4;padding:4px 10px;text-align:right}"
             "th{background:#eef1f6}td.n{text-align:left}iframe{width:100%;height:1400px;border:1px solid #d6dbe4}"
             f".meta{{color:#5b6475;margin:0 0 8px}}{FIRST_SCREEN_CSS}",
             "</style></head><body><h1>segpipe demo</h1>",
             "<p class='meta'>Synthetic data, tiny networks, a few epochs on the CPU: the pipeline is real, the "
             "numbers are those of a minutes-long training run.</p><div class='top'><div><h2>Headline metrics</h2><table>"
             "<tr><th class='n'>task</th><th class='n'>metric</th><th>value</th><th class='n'>submission</th></tr>"]
    for row in rows:
        for i, (name, value) in enumerate(row["headline"].items()):
            sub = html.escape(row["zip"]) if i == 0 else ""
            parts.append(f"<tr><td class='n'>{html.escape(row['task']) if i == 0 else ''}</td><td class='n'>"
                         f"{html.escape(name)}</td><td>{value:.4f}</td><td class='n'>{sub}</td></tr>")
    parts.append("</table></div>")
    for row in rows:
        overlay = load_overlay(Path(row["report"]).parent)
        if overlay is not None:
            parts.append(overlay.html(f"{row['task']}: "))
    parts.append("</div>")
    for row in rows:
        report = Path(row["report"])
        parts.append(f"<h2>{html.escape(row['task'])}: evaluation report</h2>")
        if report.is_file():
            parts.append(f"<iframe title='{row['task']} report' srcdoc=\"{html.escape(report.read_text(), quote=True)}\">"
                         "</iframe>")
        else:
            parts.append("<p>no report was written</p>")
    parts.append("</body></html>\n")
    dest = out / "report.html"
    atomic_write_text(dest, "".join(parts))
    return dest


def run(args: argparse.Namespace) -> int:
    import json
    import shutil
    import time

    from pipeline.errors import SegpipeError
    from pipeline.log import get_logger
    from pipeline.runners import local_runner, sigterm_as_interrupt
    from pipeline.stages import Folders, StageFailed, build_graph, run_graph

    log = get_logger("demo")
    out = Path(args.out).resolve()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks or set(tasks) - {"flare", "brats"}:
        raise SegpipeError(f"--tasks {args.tasks!r}: choose from flare, brats")
    sigterm_as_interrupt()
    t0 = time.perf_counter()
    rows = []
    for task in tasks:
        root = out / task
        root.mkdir(parents=True, exist_ok=True)
        log.info("demo %s: synthetic data in %s", task, root)
        if task == "flare":
            _synth_flare(root)
            folders = Folders(work=root / "work", config=_write_config(root / "config.yaml", FLARE_CONFIG, args.epochs_scale),
                              data=root / "data", input=root / "data" / "validation", output=root / "predictions",
                              gt=root / "data" / "validation_labels")
        else:
            _synth_brats(root)
            folders = Folders(work=root / "work", config=_write_config(root / "config.yaml", BRATS_CONFIG, args.epochs_scale),
                              data=root / "data", input=root / "input", output=root / "predictions", gt=root / "gt")
        stages = build_graph(task, folders, device="cpu")
        try:
            run_graph(stages, folders, local_runner())
        except StageFailed as exc:
            print("\n".join(f"  | {line}" for line in exc.tail[-20:]))
            raise SegpipeError(f"demo {task}: stage {exc.stage} failed with exit code {exc.code}; "
                               f"rerun `segpipe demo --out {args.out}` to resume") from None
        zip_src = folders.work / "submission" / f"{task}.zip"
        zip_dest = out / "submissions" / f"{task}.zip"
        zip_dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(zip_src, zip_dest)
        metrics = json.loads((folders.work / "metrics.json").read_text())
        rows.append({"task": task, "headline": _headline(task, metrics), "zip": str(zip_dest.relative_to(out)),
                     "report": str(folders.work / "report" / "report.html"), "predictions": str(folders.output)})
    page = _report_page(out, rows)
    print(f"\nsegpipe demo: done in {time.perf_counter() - t0:.0f} s")
    print(f"  report       {page}")
    for row in rows:
        numbers = ", ".join(f"{k} {v:.3f}" for k, v in row["headline"].items())
        print(f"  {row['task']:6s} {numbers}")
        print(f"         predictions {row['predictions']}, submission {out / row['zip']}, report {row['report']}")
    return 0
