"""The whole pipeline on embedded synthetic data: synth → prepare → train → predict → evaluate."""

from __future__ import annotations

import argparse

from pipeline.commands._common import not_implemented


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", metavar="DIR", help="where everything is written")


def run(args: argparse.Namespace) -> int:
    return not_implemented("demo", "issue #8")
