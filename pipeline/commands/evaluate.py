"""The organisers' metrics, reproduced locally: FLARE DSC/NSD, BraTS Dice/HD95 (legacy and
2023 lesion-wise), and FLARE-style efficiency of a submission image."""

from __future__ import annotations

import argparse

from pipeline.commands._common import not_implemented


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=["flare", "brats", "efficiency"])
    parser.add_argument("--pred", metavar="DIR", help="prediction folder")
    parser.add_argument("--gt", metavar="DIR", help="ground-truth folder")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--csv", metavar="FILE", help="write per-case results as CSV")


def run(args: argparse.Namespace) -> int:
    return not_implemented("evaluate", "issue #7")
