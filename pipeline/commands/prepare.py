"""Validate, reorient, resample and normalise a raw challenge folder into WORK's LMDB index.

The data folder is only read, never written; rerunning the same command resumes (finished cases
are skipped). Failed cases are listed at the end and in WORK/prepare_report.json; the exit code
is non-zero only with --strict. Without --config the task's config is chosen from the detected
data (BraTS folders → configs/brats.yaml, everything else → configs/flare.yaml)."""

from __future__ import annotations

import argparse

from pipeline.commands._common import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="DIR", help="raw data folder (read-only is fine)")
    parser.add_argument("--work", required=True, metavar="WORK", help="work folder for the index and samples")
    parser.add_argument("--layout", choices=["auto", "flare", "brats", "nnunet", "flat"], default=None,
                        help="data layout (default: the config's prepare.layout, normally auto-detected)")
    parser.add_argument("--workers", type=int, default=None, help="parallel worker processes (default: prepare.workers)")
    parser.add_argument("--strict", action="store_true", help="exit non-zero if any case failed")
    add_config_arguments(parser)


def _config_for(args: argparse.Namespace):  # -> tuple[SegpipeConfig, str | None]
    from pathlib import Path

    from data_prepare.layouts import detect_layout, discover
    from pipeline.config import CONFIG_DIR, load_config

    overrides = list(args.overrides)
    if args.layout:
        overrides.append(f"prepare.layout={args.layout}")
    if args.config:
        config = load_config(args.config, overrides)
        return config, config.task.name
    # no config: pick the task from the data, then that task's shipped config
    layout = args.layout or "auto"
    if layout == "auto":
        layout = detect_layout(Path(args.data))
    task = discover(Path(args.data), layout).task if layout in ("brats", "nnunet") else "flare"
    path = CONFIG_DIR / f"{task}.yaml"
    return load_config(path if path.is_file() else None, [f"task.name={task}", *overrides]), None


def run(args: argparse.Namespace) -> int:
    from data_prepare.runner import print_summary, run_prepare
    from pipeline.errors import SegpipeError

    if args.workers is not None and args.workers < 1:
        raise SegpipeError("--workers must be at least 1")
    config, task = _config_for(args)
    outcome = run_prepare(args.data, args.work, config.prepare, task=task, workers=args.workers,
                          label_convention=config.task.label_convention)
    print_summary(outcome)
    return 1 if args.strict and outcome.failed else 0
