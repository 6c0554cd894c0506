"""The `segpipe` command line (also `python -m pipeline`).

Each subcommand lives in `pipeline/commands/<name>.py` with `add_arguments(parser)` and
`run(args) -> int`. Command modules import only argparse-level code at import time; the heavy
stage code (torch, SimpleITK, ...) is imported inside `run`, so `segpipe --help` and the
per-case FLARE container start stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pipeline import __version__

# name → one-line help; the module is pipeline.commands.<name>
COMMANDS: dict[str, str] = {
    "synth": "write synthetic FLARE-like CT or BraTS-like MRI data in the challenge layouts",
    "prepare": "raw challenge folder → validated, reoriented, resampled samples in an LMDB index",
    "train": "train the coarse localiser or the fine segmenter from a prepared work folder",
    "predict": "coarse → ROI → fine inference, postprocessing, output in the input geometry",
    "evaluate": "the organisers' metrics (FLARE DSC/NSD, BraTS Dice/HD95) and efficiency",
    "run": "the stage graph (prepare → train → predict → evaluate → package), local or in containers",
    "demo": "the whole pipeline on embedded synthetic data",
    "package": "build the submission image with weights baked in",
    "submit": "check a prediction folder against the challenge contract and archive it",
    "entry": "the image's default command: predict /input → /output when both are mounted, else this help",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segpipe",
        description="Challenge-submission pipeline for 3D medical image segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"segpipe {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, summary in COMMANDS.items():
        module = importlib.import_module(f"pipeline.commands.{name}")
        cmd = sub.add_parser(name, help=summary, description=module.__doc__ or summary)
        module.add_arguments(cmd)
        cmd.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.errors import SegpipeError
    from pipeline.log import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(args._module.run(args) or 0)
    except SegpipeError as exc:
        print(f"segpipe {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"segpipe {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
