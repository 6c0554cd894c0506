"""Check a prediction folder against the challenge contract and archive it."""

from __future__ import annotations

import argparse

from pipeline.commands._common import not_implemented


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=["flare", "brats"], required=True)
    parser.add_argument("--pred", required=True, metavar="DIR")
    parser.add_argument("--grand-challenge", action="store_true", help="upload through gcapi (dry run unless a token is given)")


def run(args: argparse.Namespace) -> int:
    return not_implemented("submit", "issue #8")
