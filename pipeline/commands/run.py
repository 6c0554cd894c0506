"""Run the stage graph: prepare → train-coarse → train-fine → package → predict → evaluate → submit
(each stage named after the segpipe command it runs).

Finished stages are recorded in WORK/.stages/<stage>.json with a hash of the config, the
overrides, the inputs and the stages before; a rerun skips them, reruns what a changed config
or changed data invalidates, and resumes an interrupted stage (prepare keeps prepared cases,
train continues from its last checkpoint). `--backend docker` runs every stage as a container
of the project image with the mounts of docker-compose.yml (data and input read-only).
Stages without their folder are left out: no --input → no predict/submit, no --gt → no evaluate.
The docker backend's evaluate writes metrics.json/csv but no HTML report (the image has no
matplotlib): `segpipe evaluate ... --report DIR` on the host makes it from the same folders.
"""

from __future__ import annotations

import argparse

from pipeline.commands._common import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--work", required=True, metavar="WORK", help="index, checkpoints, weights, metrics, markers")
    parser.add_argument("--data", metavar="DIR", help="raw training data (read-only)")
    parser.add_argument("--input", metavar="DIR", help="cases to predict (default: DATA/validation when it exists)")
    parser.add_argument("--output", metavar="DIR", help="predictions (default: WORK/predictions)")
    parser.add_argument("--gt", metavar="DIR", help="labels of the input cases (default: DATA/validation_labels when it exists)")
    parser.add_argument("--backend", choices=["local", "docker"], default="local")
    parser.add_argument("--from", dest="start", metavar="STAGE", help="rerun from this stage on")
    parser.add_argument("--to", dest="stop", metavar="STAGE", help="stop after this stage")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="train/predict device")
    parser.add_argument("--list", action="store_true", help="print the stages, their state and commands, then exit")
    docker = parser.add_argument_group("docker backend")
    docker.add_argument("--image", default=None, help="project image (default: $SEGPIPE_IMAGE or segpipe:dev)")
    docker.add_argument("--gpus", action="store_true", help="request all GPUs for train/predict (nvidia-container-toolkit)")
    docker.add_argument("--user", default=None, metavar="UID:GID", help="container user (default: yours; 1000:1000 as root)")
    docker.add_argument("--shm-size", default="8g", help="/dev/shm of the training stages (default 8g)")


def folders_from_args(args: argparse.Namespace):  # -> tuple[Folders, SegpipeConfig]
    from pathlib import Path

    from pipeline.config import load_config, resolve_config_path
    from pipeline.errors import SegpipeError
    from pipeline.stages import Folders

    if not args.config:
        raise SegpipeError("--config is required (a YAML file or a task name such as flare)")
    config_file = resolve_config_path(args.config).resolve()
    config = load_config(config_file, list(args.overrides))
    data = Path(args.data).resolve() if args.data else None
    if data is not None and not data.is_dir():
        raise SegpipeError(f"--data {data}: not a folder")
    work = Path(args.work).resolve()
    inp = Path(args.input).resolve() if args.input else None
    if inp is None and data is not None and (data / "validation").is_dir():
        inp = data / "validation"
    gt = Path(args.gt).resolve() if args.gt else None
    if gt is None and args.input is None and data is not None and (data / "validation_labels").is_dir():
        gt = data / "validation_labels"
    output = Path(args.output).resolve() if args.output else (work / "predictions" if inp is not None else None)
    for name, p in (("--input", inp), ("--gt", gt)):
        if p is not None and not p.is_dir():
            raise SegpipeError(f"{name} {p}: not a folder")
    return Folders(work=work, config=config_file, data=data, input=inp, output=output, gt=gt), config


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from pipeline.runners import DockerOptions, docker_runner, local_runner, sigterm_as_interrupt
    from pipeline.stages import StageFailed, build_graph, describe, run_graph

    folders, config = folders_from_args(args)
    stages = build_graph(config.task.name, folders, args.overrides, label_convention=config.task.label_convention,
                         device=args.device, report=args.backend == "local")
    if args.list:
        for line in describe(stages, folders):
            print(line)
        return 0
    sigterm_as_interrupt()
    if args.backend == "docker":
        from pipeline.docker_engine import connect

        client = connect()
        opts = DockerOptions(image=args.image or os.environ.get("SEGPIPE_IMAGE", "segpipe:dev"), user=args.user,
                             gpus=args.gpus, shm_size=args.shm_size)
        runner = docker_runner(client, opts)
    else:
        runner = local_runner()
    try:
        result = run_graph(stages, folders, runner, start=args.start, stop=args.stop, backend=args.backend)
    except StageFailed as exc:
        print("\n".join(f"  | {line}" for line in exc.tail[-20:]), file=sys.stderr)
        print(f"segpipe run: stage {exc.stage} failed with exit code {exc.code} (log tail above); "
              f"rerun the same command to resume", file=sys.stderr)
        return exc.code if 0 < exc.code < 256 else 1
    ran = result.ran()
    print(f"segpipe run: {len(result.results)} stage(s): {', '.join(ran) or 'none'} ran, "
          f"{len(result.results) - len(ran)} up to date; work folder {folders.work}")
    return 0
