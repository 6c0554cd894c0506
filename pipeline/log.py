"""Logging and progress: what a person reads while a stage runs."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_CONFIGURED = False


def setup_logging(verbose: bool = False) -> None:
    global _CONFIGURED
    level = logging.DEBUG if verbose else getattr(logging, os.environ.get("SEGPIPE_LOG", "INFO").upper(), logging.INFO)
    if _CONFIGURED:
        logging.getLogger("segpipe").setLevel(level)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("segpipe")
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    _CONFIGURED = True


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"segpipe.{name}")


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "case") -> Iterator[T]:
    """A tqdm bar on a terminal, silent elsewhere (CI logs get the stage's summary line instead)."""
    from tqdm import tqdm

    disable = None if os.environ.get("SEGPIPE_PROGRESS", "auto") == "auto" else os.environ["SEGPIPE_PROGRESS"] == "0"
    yield from tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, file=sys.stderr, dynamic_ncols=True)
