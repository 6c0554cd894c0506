"""Arguments and behaviour shared by several subcommands."""

from __future__ import annotations

import argparse
import sys


def not_implemented(command: str, issue: str) -> int:
    print(f"segpipe {command}: not implemented yet ({issue})", file=sys.stderr)
    return 3


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config` and repeated `--set KEY=VALUE`, the same on every stage command."""
    parser.add_argument("--config", metavar="YAML", help="config file or task name (configs/<task>.yaml)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set prepare.workers=4 (repeatable)",
    )
