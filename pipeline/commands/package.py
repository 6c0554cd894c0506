"""Build the submission image with the weights baked in, smoke-test it, save `teamname.tar.gz`.

    segpipe package --task flare --weights model_weights/flare_x --team MyTeam   # → myteam:latest, out/myteam.tar.gz
    segpipe package --task brats --weights model_weights/brats_x                # + out/mlcube/{mlcube.yaml,workspace/parameters.yaml}
    segpipe package --task flare --from-work WORK --weights WORK/model_weights --no-image   # assemble weights only

The image is FROM the project image (--base, default $SEGPIPE_IMAGE or segpipe:dev) plus the
weights folder, built through the docker SDK; the smoke run feeds it one synthetic case the
way the organisers do (FLARE: `sh predict.sh`, read-only inputs; BraTS: the MLCube `infer`
task), without network, as a non-root user, and checks the output against the contract."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=["flare", "brats"], required=True)
    parser.add_argument("--weights", metavar="DIR", help="weights folder (default: the shipped weights of the task)")
    parser.add_argument("--team", default="segpipe", help="image/team name (lower-cased, as FLARE requires)")
    parser.add_argument("--from-work", metavar="WORK", help="first export WORK's trained stages into --weights")
    parser.add_argument("--no-image", action="store_true", help="stop after assembling the weights (no docker)")
    parser.add_argument("--base", default=None, help="project image to build on (default: $SEGPIPE_IMAGE or segpipe:dev)")
    parser.add_argument("--out", default="submission", metavar="DIR", help="where the tarball / MLCube files go")
    parser.add_argument("--no-save", action="store_true", help="skip `docker save` (the image stays on the engine)")
    parser.add_argument("--no-smoke", action="store_true", help="skip the smoke prediction")
    parser.add_argument("--gpus", action="store_true", help="smoke run with all GPUs")
    parser.add_argument("--user", default=None, metavar="UID:GID", help="smoke-run user (default: yours; 1000:1000 as root)")


def run(args: argparse.Namespace) -> int:
    import os
    import tempfile
    from pathlib import Path

    from pipeline.errors import SegpipeError
    from pipeline.weights import default_weights_root, find_weights, load_weights, package_work

    if args.from_work:
        if not args.weights:
            raise SegpipeError("--from-work needs --weights DIR (where to assemble the weights)")
        manifest = package_work(args.from_work, args.weights, name=Path(args.weights).name)
        print(f"package: weights of {args.from_work} assembled in {args.weights} ({manifest.name})")
    weights = Path(args.weights) if args.weights else find_weights(default_weights_root(), args.task)
    weights = find_weights(weights, args.task)
    loaded = load_weights(weights, "cpu")  # hashes + state dicts checked before anything is built
    if loaded.task != args.task:
        raise SegpipeError(f"{weights}: weights for task {loaded.task!r}, not {args.task!r}")
    if args.no_image:
        return 0

    from pipeline.docker_engine import connect, require_image
    from pipeline.runners import default_user
    from pipeline.submission.contract import check_predictions
    from pipeline.submission.image import build_image, save_image, smoke_run, team_name
    from pipeline.submission.mlcube import write_mlcube

    team = team_name(args.team)
    tag = f"{team}:latest"
    base = args.base or os.environ.get("SEGPIPE_IMAGE", "segpipe:dev")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    client = connect(timeout=600)
    require_image(client, base, f"build the project image first: docker build -t {base} .")
    image_id = build_image(client, base, weights.resolve(), tag, args.task)
    print(f"package: built {tag} ({image_id[:19]}) from {base} with weights {weights}")
    if not args.no_smoke:
        with tempfile.TemporaryDirectory(prefix="segpipe-smoke-") as tmp:
            inputs, outputs, _ = smoke_run(client, tag, args.task, Path(tmp), args.user or default_user(), args.gpus)
            check = check_predictions(args.task, outputs, inputs, convention=loaded.manifest.get("label_convention", "2023"))
            if not check.ok:
                raise SegpipeError(f"smoke run of {tag}: output breaks the contract: {'; '.join(check.problems)}")
            print(f"package: smoke run of {tag} passed ({check.checked} case(s), contract checked)")
    if args.task == "brats":
        cube, params = write_mlcube(out / "mlcube", tag, name=team)
        print(f"package: MLCube files {cube} and {params}")
    if not args.no_save:
        dest = save_image(client, tag, out / f"{team}.tar.gz")
        print(f"package: saved {tag} to {dest} ({dest.stat().st_size / 2**20:.0f} MiB)")
    return 0
