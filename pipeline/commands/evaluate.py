"""The organisers' metrics, reproduced locally: FLARE DSC/NSD, BraTS Dice/HD95 (legacy and
2023 lesion-wise), and FLARE-style efficiency of a submission image.

  segpipe evaluate flare --pred DIR --gt DIR [--json FILE] [--csv FILE] [--report DIR]
  segpipe evaluate brats --pred DIR --gt DIR --convention legacy|2023 [--lesionwise]
  segpipe evaluate brats --pred DIR --gt DIR --convention 2025
  segpipe evaluate efficiency --image IMAGE --inputs DIR [--outputs DIR] [--gt DIR]
  segpipe evaluate efficiency --local predict.sh --inputs DIR ...

Exit status: 0 when every case was scored (missing predictions are scored 0 and listed),
1 when a case could not be read or a container failed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("kind", choices=["flare", "brats", "efficiency"])
    parser.add_argument("--pred", metavar="DIR", help="prediction folder (<case>.nii.gz, matched by name)")
    parser.add_argument("--gt", metavar="DIR", help="ground-truth folder (efficiency: also score the outputs)")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON (schema in the README)")
    parser.add_argument("--csv", metavar="FILE", help="write per-case results as CSV")
    parser.add_argument("--report", metavar="DIR", help="write report.html (self-contained) and its PNGs here")
    parser.add_argument("--workers", type=int, default=2, metavar="N", help="parallel cases (default 2)")
    brats = parser.add_argument_group("brats")
    brats.add_argument("--convention", choices=["legacy", "2023", "2025"], default="2023",
                       help="legacy: labels 1/2/4, medpy HD95, 373.13; 2023: labels 1/2/3, DeepMind HD95, 374; "
                            "2025: the organisers' brats-evaluation (ET/TC/WT/NETC/SNFH/RC, global + lesion-wise "
                            "DSC/NSD/HD95, TP/FP/FN; always lesion-wise)")
    brats.add_argument("--lesionwise", action="store_true", help="add the 2023 lesion-wise Dice/HD95")
    brats.add_argument("--challenge", choices=["GLI", "SSA", "PED", "MEN", "MET"], default="GLI",
                       help="lesion-wise dilation and volume threshold (default GLI: 3 iterations, 50 mm³)")
    brats.add_argument("--subsets", metavar="SPEC",
                       help="missing-modality table: run --weights on --data with every subset ('all' = the 15 "
                            "non-empty subsets, or e.g. 'flair,t1ce+t2'); Dice/HD95 per subset and their mean")
    brats.add_argument("--data", metavar="DIR", help="with --subsets: labeled BraTS-layout folder")
    brats.add_argument("--weights", metavar="DIR", help="with --subsets: weights folder (default: the packaged ones)")
    brats.add_argument("--markdown", metavar="FILE", help="with --subsets: write the table as Markdown")
    brats.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="with --subsets")
    report = parser.add_argument_group("report")
    report.add_argument("--images", metavar="DIR", help="the overlays' background images: <case>_0000.nii.gz files "
                        "or BraTS case folders (<case>/<case>-t1c.nii.gz, ...)")
    report.add_argument("--efficiency", metavar="FILE", help="efficiency JSON whose timelines go into the report")
    eff = parser.add_argument_group("efficiency")
    eff.add_argument("--image", metavar="IMAGE", help="submission image, e.g. teamname:latest")
    eff.add_argument("--inputs", metavar="DIR", help="input cases; each runs alone in a fresh container")
    eff.add_argument("--outputs", metavar="DIR", help="collect every case's outputs here")
    eff.add_argument("--local", metavar="PREDICT_SH", help="run this predict.sh as a plain process instead of docker")
    eff.add_argument("--gpus", default="auto", help="auto | all | none | device=N[,M] (FLARE22 used device=1)")
    eff.add_argument("--time-limit", type=float, default=3600.0, metavar="S",
                     help="kill a case after S seconds and score it as stuck, as FLARE does (default 3600)")
    eff.add_argument("--shm-size", default=None, help="e.g. 28g (FLARE23/24); default: docker's 64 MB, as FLARE22")
    eff.add_argument("--memory", default=None, help="memory limit, e.g. 28g (FLARE23/24); default none")
    eff.add_argument("--network", default=None, help="docker network mode; default: docker's bridge, as the FLARE organisers; none = offline")
    eff.add_argument("--interval", type=float, default=0.1, help="sampling interval in s (organisers: 0.1)")


def _require(args: argparse.Namespace, *names: str) -> None:
    from pipeline.errors import SegpipeError

    missing = [f"--{n.replace('_', '-')}" for n in names if not getattr(args, n)]
    if missing:
        raise SegpipeError(f"evaluate {args.kind} needs {' and '.join(missing)}")


def _emit(results: dict, args: argparse.Namespace) -> None:
    from evaluation.results import format_table, write_csv, write_json

    print(format_table(results))
    if args.json:
        write_json(results, args.json)
    if args.csv:
        write_csv(results, args.csv)


def run(args: argparse.Namespace) -> int:
    from pipeline.errors import SegpipeError

    if args.workers < 1:
        raise SegpipeError("--workers must be at least 1")
    if args.kind == "efficiency":
        return _run_efficiency(args)
    if args.kind == "brats" and getattr(args, "subsets", None):
        return _run_subsets(args)
    _require(args, "pred", "gt")
    if args.kind == "flare":
        from evaluation.flare import evaluate_flare

        results = evaluate_flare(args.pred, args.gt, workers=args.workers)
    else:
        from evaluation.brats import evaluate_brats

        results = evaluate_brats(
            args.pred, args.gt, convention=args.convention, lesionwise=args.lesionwise,
            challenge=args.challenge, workers=args.workers,
        )
    _emit(results, args)
    if args.report:
        from evaluation.report import write_report
        from evaluation.results import load_json

        efficiency = load_json(args.efficiency) if args.efficiency else None
        page = write_report(args.report, accuracy=results, efficiency=efficiency, pred_dir=args.pred,
                            gt_dir=args.gt, image_dir=args.images)
        print(f"report: {page}")
    return 1 if results["failed"] else 0


def _run_efficiency(args: argparse.Namespace) -> int:
    from pipeline.errors import SegpipeError

    _require(args, "inputs")
    if bool(args.image) == bool(args.local):
        raise SegpipeError("evaluate efficiency needs exactly one of --image IMAGE (docker) or --local predict.sh")
    from evaluation.efficiency import DockerImage, Limits, LocalScript, format_efficiency, measure

    runner = LocalScript(args.local) if args.local else \
        DockerImage.connect(args.image, gpus=args.gpus, network=args.network)
    results = measure(args.inputs, runner, Limits(args.time_limit, args.shm_size, args.memory),
                      outputs=args.outputs, interval=args.interval, gt_dir=args.gt, workers=args.workers)
    print(format_efficiency(results))
    if args.json:
        from evaluation.results import write_json

        write_json(results, args.json)
    if args.csv:
        from evaluation.efficiency import write_efficiency_csv

        write_efficiency_csv(results, args.csv)
    if args.report:
        from evaluation.report import write_report

        page = write_report(args.report, accuracy=results.get("accuracy"), efficiency=results,
                            pred_dir=args.outputs, gt_dir=args.gt, image_dir=args.inputs)
        print(f"report: {page}")
    return 1 if any(c["status"] != "ok" for c in results["cases"]) else 0


def _run_subsets(args: argparse.Namespace) -> int:
    """`evaluate brats --subsets`: the missing-modality papers' table (evaluation/subsets.py)."""
    from pipeline.errors import SegpipeError

    _require(args, "data")
    if args.convention == "2025":
        raise SegpipeError("--subsets scores with --convention 2023 or legacy (the model's output labels)")
    from evaluation.subsets import (
        evaluate_subsets,
        markdown_table,
        pipeline_cases,
        pipeline_predictor,
        write_outputs,
    )
    from fine_seg.missing.subsets import parse_subsets

    try:
        subsets = parse_subsets(args.subsets)
    except ValueError as exc:
        raise SegpipeError(f"--subsets: {exc}") from None
    cases = pipeline_cases(args.data)
    if not cases:
        raise SegpipeError(f"{args.data}: no labeled BraTS cases")
    predict = pipeline_predictor(args.weights, device=args.device, convention=args.convention)
    results = evaluate_subsets(predict, cases, subsets, convention=args.convention)
    print(markdown_table(results), end="")
    write_outputs(results, json_path=args.json, markdown_path=args.markdown, csv_path=args.csv)
    return 1 if results["failed"] else 0
