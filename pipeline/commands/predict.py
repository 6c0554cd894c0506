"""Coarse → ROI → fine inference with connected-component postprocessing; every output has
exactly its input's size, spacing, origin and direction (uint8, written atomically).

Modes (auto-detected from IN, or --mode): flare (IN/<case>_0000.nii.gz → OUT/<case>.nii.gz),
grand-challenge (IN/images/<slug>/<uuid>.mha → OUT/images/<slug>/<uuid>.mha), brats and mlcube
(IN/<ID>/<ID>-{t1c,t1n,t2f,t2w}.nii.gz, any subset → OUT/<ID>.nii.gz). The MLCube entry is the
`infer` command: `infer --data_path DIR --output_path DIR [--parameters_file FILE]`.
Without --weights the shipped weights of the detected task are used (SEGPIPE_WEIGHTS or
model_weights/). A failed case gets an empty mask (--on-error empty), nothing (skip) or stops
the run (fail); the exit code is 1 when any case failed."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from pipeline.commands._common import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", required=True, metavar="IN", help="input folder")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    parser.add_argument("--weights", metavar="DIR", help="model_weights/<name> folder (default: shipped weights)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--mode", choices=["auto", "flare", "grand-challenge", "brats", "mlcube"], default="auto")
    parser.add_argument("--on-error", choices=["empty", "skip", "fail"], default="empty",
                        help="what a failed case gets: an empty mask in its grid (default), nothing, or stop the run")
    parser.add_argument("--label-convention", choices=["2023", "legacy", "brats2024"], default=None,
                        help="BraTS output labels: 2023 (1,2,3), legacy (1,2,4) or brats2024 (1,2,3 and 4 = "
                             "resection cavity); default: task.label_convention")
    parser.add_argument("--tta", action="store_true", help="mirror test-time augmentation (predict.mirror_axes)")
    parser.add_argument("--parameters-file", metavar="YAML", help="MLCube parameters file (see `infer`)")
    add_config_arguments(parser)


def options_from_config(config: Any, label_convention: str | None = None, tta: bool = False) -> Any:
    from pipeline.inference.engine import Options

    p = config.predict
    return Options(
        overlap=p.overlap, window=p.window,
        mirror_axes=tuple(int(a) for a in p.mirror_axes) if (p.tta or tta) else (),
        coarse_min_volume_mm3=p.coarse_min_volume_mm3, z_window_mm=p.z_window_mm, roi_margin_mm=p.roi_margin_mm,
        amp=p.amp, label_convention=label_convention or config.task.label_convention,
        postprocess=p.postprocess.model_dump(mode="json") if p.postprocess is not None else None,
    )


def read_parameters(path: str | None) -> tuple[dict[str, Any], list[str]]:
    """MLCube parameters file: top-level `device`, `on_error`, `weights`, `label_convention`, `mode`;
    everything else must be segpipe config sections (task:, predict:) and becomes --set overrides."""
    if not path:
        return {}, []
    import json
    from pathlib import Path

    import yaml

    from pipeline.errors import ConfigError

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"parameters file {path}: unreadable ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"parameters file {path}: top level must be a mapping")
    flat = {k: data.pop(k) for k in ("device", "on_error", "weights", "label_convention", "mode") if k in data}
    overrides = []
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"parameters file {path}: {section!r} must be a config section (mapping)")
        overrides += [f"{section}.{k}={json.dumps(v)}" for k, v in values.items()]
    return flat, overrides


def run(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.inference.runner import run_predict

    params, param_overrides = read_parameters(getattr(args, "parameters_file", None))
    config = load_config(args.config, [*param_overrides, *args.overrides])
    label_convention = args.label_convention or params.get("label_convention")
    options = options_from_config(config, label_convention, args.tta)
    result = run_predict(
        args.input, args.output, weights=args.weights or params.get("weights"),
        device=params.get("device", args.device) if args.device == "auto" else args.device,
        mode=params.get("mode", args.mode) if args.mode == "auto" else args.mode,
        on_error=params.get("on_error", args.on_error) if args.on_error == "empty" else args.on_error,
        options=options, gc_output_slug=config.predict.gc_output_slug, num_threads=config.predict.num_threads,
    )
    print(f"predict: {len(result.written)} written, {len(result.failed)} failed in {result.seconds:.1f} s",
          file=sys.stderr)
    return result.exit_code


def infer_main(argv: Sequence[str] | None = None) -> int:
    """MLCube task `infer` (the BraTS orchestrator runs `infer --data_path=/mlcube_io0
    --output_path=/mlcube_io2 [--parameters_file=/mlcube_io3/x.yml]`): BraTS case folders in,
    `<ID>.nii.gz` out. Unknown `--key=value` arguments (e.g. a weights parameter) are ignored
    with a warning, as MLCube passes every declared input."""
    from pipeline.cli import main

    parser = argparse.ArgumentParser(prog="infer", description=infer_main.__doc__)
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--output_path", required=True)
    parser.add_argument("--parameters_file", default=None)
    parser.add_argument("--weights", default=None, help="weights folder (default: the shipped BraTS weights)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"infer: ignoring {' '.join(unknown)}", file=sys.stderr)
    cli = ["predict", "-i", args.data_path, "-o", args.output_path, "--mode", "mlcube", "--device", args.device]
    if args.parameters_file:
        cli += ["--parameters-file", args.parameters_file]
    if args.weights:
        cli += ["--weights", args.weights]
    return main(cli)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(infer_main())
