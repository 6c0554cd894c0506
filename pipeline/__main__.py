"""`python -m pipeline` is the same as the `segpipe` console command (torchrun needs a module)."""

import sys

from pipeline.cli import main

sys.exit(main())
