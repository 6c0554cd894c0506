"""Build the submission image with the weights baked in, smoke-test it, save `teamname.tar.gz`."""

from __future__ import annotations

import argparse

from pipeline.commands._common import not_implemented


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=["flare", "brats"], required=True)
    parser.add_argument("--weights", metavar="DIR")
    parser.add_argument("--team", default="segpipe", help="image/team name (lower-cased, as FLARE requires)")


def run(args: argparse.Namespace) -> int:
    return not_implemented("package", "issue #8")
