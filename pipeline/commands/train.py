"""Train the coarse localiser or the fine segmenter (cross pseudo supervision over labeled and
uncertainty-filtered unlabeled scans). Scale out with `torchrun --nproc_per_node=N -m pipeline train ...`."""

from __future__ import annotations

import argparse

from pipeline.commands._common import add_config_arguments, not_implemented


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", choices=["coarse", "fine"])
    parser.add_argument("--work", required=True, metavar="WORK", help="work folder written by `segpipe prepare`")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--dry-run", action="store_true", help="print parameter counts and FLOPs, then exit")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return not_implemented("train", "issue #4")
