"""Coarse → ROI → fine inference with connected-component postprocessing; every output has
exactly its input's size, spacing, origin and direction (uint8, written atomically).

Modes (auto-detected from IN, or --mode): flare (IN/<case>_0000.nii.gz → OUT/<case>.nii.gz),
grand-challenge (IN/images/<slug>/<uuid>.mha → OUT/images/<slug>/<uuid>.mha), brats and mlcube
(IN/<ID>/<ID>-{t1c,t1n,t2f,t2w}.nii.gz, any subset → OUT/<ID>.nii.gz). The MLCube entry is the
`infer` command: `infer --data_path DIR --output_path DIR [--parameters_file FILE]`.
Without --weights the shipped weights of the detected task are used (SEGPIPE_WEIGHTS or
model_weights/). A failed case gets an empty mask (--on-error empty), nothing (skip) or stops
the run (fail); the exit code is 1 when any case failed.

Settings: one validated PredictSection, from the config's `predict:` section, then the MLCube
parameters file, then `--set`, then the flags given on the command line (a given flag always
wins, even when it names the default)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from pipeline.commands._common import add_config_arguments

# flags that set a predict setting; their argparse default is None, so "given" is "not None"
SETTING_FLAGS = ("weights", "device", "mode", "on_error", "label_convention", "tta")
# the MLCube parameters file's top-level keys, the same predict settings
PARAMETER_KEYS = ("device", "on_error", "weights", "label_convention", "mode")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", required=True, metavar="IN", help="input folder")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    parser.add_argument("--weights", metavar="DIR", help="model_weights/<name> folder (default: shipped weights)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="default: predict.device (auto)")
    parser.add_argument("--mode", choices=["auto", "flare", "grand-challenge", "brats", "mlcube"], default=None,
                        help="default: predict.mode (auto: detected from IN)")
    parser.add_argument("--on-error", choices=["empty", "skip", "fail"], default=None,
                        help="what a failed case gets: an empty mask in its grid (default), nothing, or stop the run")
    parser.add_argument("--label-convention", choices=["2023", "legacy", "brats2024"], default=None,
                        help="BraTS output labels: 2023 (1,2,3), legacy (1,2,4) or brats2024 (1,2,3 and 4 = "
                             "resection cavity); default: task.label_convention")
    parser.add_argument("--tta", action="store_true", default=None,
                        help="mirror test-time augmentation (predict.mirror_axes)")
    parser.add_argument("--parameters-file", metavar="YAML", help="MLCube parameters file (see `infer`)")
    add_config_arguments(parser)


def read_parameters(path: str | None) -> list[str]:
    """MLCube parameters file → `--set` overrides. Top-level `device`, `on_error`, `weights`,
    `label_convention`, `mode` are predict settings (predict.<key>); everything else must be a
    segpipe config section (task:, predict:)."""
    if not path:
        return []
    from pathlib import Path

    import yaml

    from pipeline.errors import ConfigError

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"parameters file {path}: unreadable ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"parameters file {path}: top level must be a mapping")
    overrides = [_override("predict", key, data.pop(key)) for key in PARAMETER_KEYS if key in data]
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"parameters file {path}: {section!r} must be a config section (mapping)")
        overrides += [_override(section, k, v) for k, v in values.items()]
    return overrides


def _override(section: str, key: str, value: Any) -> str:
    import json

    return f"{section}.{key}={json.dumps(value)}"


def predict_settings(args: argparse.Namespace) -> Any:
    """The one PredictSection of a run: config file → parameters file → `--set` → explicit flags,
    each later source winning; a flag left out changes nothing. The label convention left unset
    everywhere is the task's."""
    from pipeline.config import load_config

    flags = [_override("predict", k, str(v) if k == "weights" else v)
             for k in SETTING_FLAGS if (v := getattr(args, k, None)) is not None]
    overrides = [*read_parameters(getattr(args, "parameters_file", None)), *args.overrides, *flags]
    config = load_config(args.config, overrides)
    settings = config.predict
    if settings.label_convention is None:
        settings = settings.model_copy(update={"label_convention": config.task.label_convention})
    return settings


def run(args: argparse.Namespace) -> int:
    from pipeline.inference.runner import run_predict

    result = run_predict(args.input, args.output, predict_settings(args))
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
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                        help="default: the parameters file's device, else auto")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"infer: ignoring {' '.join(unknown)}", file=sys.stderr)
    cli = ["predict", "-i", args.data_path, "-o", args.output_path, "--mode", "mlcube"]
    if args.device:
        cli += ["--device", args.device]
    if args.parameters_file:
        cli += ["--parameters-file", args.parameters_file]
    if args.weights:
        cli += ["--weights", args.weights]
    return main(cli)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(infer_main())
