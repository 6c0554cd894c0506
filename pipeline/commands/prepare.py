"""Validate, reorient, resample and normalise a raw challenge folder into WORK's LMDB index.

The data folder is only read, never written; rerunning the same command resumes."""

from __future__ import annotations

import argparse

from pipeline.commands._common import add_config_arguments, not_implemented


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="DIR", help="raw data folder (read-only is fine)")
    parser.add_argument("--work", required=True, metavar="WORK", help="work folder for the index and samples")
    parser.add_argument("--layout", choices=["auto", "flare", "brats", "nnunet", "flat"], default=None)
    parser.add_argument("--workers", type=int, default=None, help="parallel worker processes")
    parser.add_argument("--strict", action="store_true", help="exit non-zero if any case failed")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return not_implemented("prepare", "issue #3")
