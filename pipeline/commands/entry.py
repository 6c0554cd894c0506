"""The image's default command: what runs when a platform starts the container with no command.

grand-challenge and the BraTS 2025 orchestrator mount `/input` (read-only) and `/output` and
name no command. With both folders present this predicts `/input` → `/output` in the layout
found there:
- grand-challenge: `/input/inputs.json` and/or `/input/images/<slug>/<uuid>.mha` →
  `/output/images/<output slug>/<uuid>.mha`; the output socket slug is SEGPIPE_GC_OUTPUT_SLUG
  (set by `segpipe package --target grand-challenge`), else predict.gc_output_slug, else the
  input's slug;
- BraTS 2025: `/input/<ID>/<ID>-{t1c,t1n,t2f,t2w}.nii.gz`, any subset → `/output/<ID>.nii.gz`.
Weights: a model tarball that grand-challenge extracts to /opt/ml/model (SEGPIPE_MODEL_DIR)
wins when it holds weights for the task, else the weights baked into the image.
Without the two folders it prints `segpipe --help`. Explicit commands (`sh predict.sh`, MLCube's
`infer ...`, `segpipe ...`) replace this default and behave as before.
"""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", default="/input", metavar="IN", help="input mount (default /input)")
    parser.add_argument("--output", default="/output", metavar="OUT", help="output mount (default /output)")
    parser.add_argument("--model-dir", default=os.environ.get("SEGPIPE_MODEL_DIR", "/opt/ml/model"), metavar="DIR",
                        help="grand-challenge model tarball mount (default $SEGPIPE_MODEL_DIR or /opt/ml/model)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def model_weights(model_dir: str, task: str) -> str | None:
    """The weights folder inside an uploaded model tarball, or None (then the baked-in ones)."""
    from pathlib import Path

    from pipeline.weights import WeightsError, find_weights, read_manifest

    root = Path(model_dir)
    if not root.is_dir():
        return None
    try:
        found = find_weights(root, task)
        other = read_manifest(found).get("task")
        if other != task:
            raise WeightsError(f"{found}: weights for task {other!r}, the input is {task!r}")
        return str(found)
    except WeightsError as exc:
        print(f"segpipe entry: {root} holds no usable weights ({exc}); using the image's own", file=sys.stderr)
        return None


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.cli import build_parser, main
    from pipeline.inference.modes import detect_mode

    inp, out = Path(args.input), Path(args.output)
    if not (inp.is_dir() and out.is_dir()):
        build_parser().print_help()
        return 0
    mode = detect_mode(inp)
    task = "flare" if mode in ("flare", "grand-challenge") else "brats"
    argv = ["predict", "-i", str(inp), "-o", str(out), "--mode", mode, "--device", args.device]
    slug = os.environ.get("SEGPIPE_GC_OUTPUT_SLUG")
    if mode == "grand-challenge" and slug:
        argv += ["--set", f"predict.gc_output_slug={slug}"]
    weights = model_weights(args.model_dir, task)
    if weights:
        argv += ["--weights", weights]
    print(f"segpipe entry: {mode} layout in {inp} → {out}"
          f"{f' (weights {weights})' if weights else ''}", file=sys.stderr)
    return main(argv)
