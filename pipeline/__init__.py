"""segpipe: raw challenge data → LMDB index → coarse-to-fine training → challenge-ready predictions.

`pipeline` holds the CLI, configuration, stage graph and the primitives every stage shares
(geometry-exact image I/O, safe paths, atomic writes, task definitions).
"""

__version__ = "0.1.0"
