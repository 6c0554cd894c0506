"""Coarse → ROI → fine inference with connected-component postprocessing; every output has
exactly its input's size, spacing, origin and direction."""

from __future__ import annotations

import argparse

from pipeline.commands._common import not_implemented


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", required=True, metavar="IN", help="input folder")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    parser.add_argument("--weights", metavar="DIR", help="model_weights/<name> folder (default: shipped weights)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--mode", choices=["auto", "flare", "grand-challenge", "brats", "mlcube"], default="auto")
    parser.add_argument("--on-error", choices=["empty", "skip", "fail"], default="empty")


def run(args: argparse.Namespace) -> int:
    return not_implemented("predict", "issue #5")
