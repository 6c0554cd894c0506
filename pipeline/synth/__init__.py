"""Synthetic challenge data: FLARE22-like abdominal CT and BraTS-like brain MRI.

The machines segpipe is built and tested on cannot download the real data sets, so tests,
benchmarks and the demo run on these. In memory: `make_flare_case(seed, size)` and
`make_brats_case(seed, size)` return canonical-LPS numpy arrays plus geometry. On disk:
`write_flare_dataset(...)` / `write_brats_dataset(...)` write the challenge layouts
(see pipeline.synth.dataset) and return the manifest.
"""

from __future__ import annotations

from pipeline.synth.brats import BratsCase, make_brats_case
from pipeline.synth.dataset import (
    draw_present,
    parse_missing_rates,
    write_brats_dataset,
    write_flare_dataset,
)
from pipeline.synth.flare import FlareCase, make_flare_case

__all__ = [
    "BratsCase",
    "FlareCase",
    "draw_present",
    "make_brats_case",
    "make_flare_case",
    "parse_missing_rates",
    "write_brats_dataset",
    "write_flare_dataset",
]
