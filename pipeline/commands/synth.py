"""Write synthetic FLARE-like CT or BraTS-like MRI data in the challenge layouts."""

from __future__ import annotations

import argparse

from pipeline.commands._common import not_implemented


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=["flare", "brats"])
    parser.add_argument("out", metavar="OUT")


def run(args: argparse.Namespace) -> int:
    return not_implemented("synth", "issue #2")
