"""Build the submission image with the weights baked in, smoke-test it, save `teamname.tar.gz`.

    segpipe package --task flare --weights model_weights/flare_x --team MyTeam   # → myteam:latest, out/myteam.tar.gz
    segpipe package --task brats --weights model_weights/brats_x                # + out/mlcube/{mlcube.yaml,workspace/parameters.yaml}
    segpipe package --task flare --target grand-challenge --gc-output-slug abdominal-organ-segmentation  # + out/model.tar.gz
    segpipe package --task brats --target brats2025                             # no-command /input → /output image
    segpipe package --task flare --from-work WORK --weights WORK/model_weights --no-image   # assemble weights only
    segpipe package --task flare --weights model_weights/flare_x --openvino --no-image     # + OpenVINO IR (fast CPU runtime)

Targets (default: flare for --task flare, mlcube for --task brats): flare (`sh predict.sh`),
mlcube (BraTS ≤2024: `infer ...`), grand-challenge (no command, /input → /output/images/<slug>/,
weights from the uploaded model tarball at /opt/ml/model, else the baked-in ones) and brats2025
(no command, /input/<ID>/ → /output/<ID>.nii.gz). The image is FROM the project image (--base,
default $SEGPIPE_IMAGE or segpipe:dev) plus the weights folder, built through the docker SDK;
the smoke run feeds it one synthetic case the way the target platform starts it, without
network, as a non-root user, and checks the output against the contract."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=["flare", "brats"], required=True)
    parser.add_argument("--target", choices=["flare", "mlcube", "grand-challenge", "brats2025"], default=None,
                        help="the platform (default: flare for --task flare, mlcube for --task brats)")
    parser.add_argument("--gc-output-slug", metavar="SLUG",
                        help="grand-challenge: the algorithm's output image socket (stored in the image)")
    parser.add_argument("--weights", metavar="DIR", help="weights folder (default: the shipped weights of the task)")
    parser.add_argument("--team", default="segpipe", help="image/team name (lower-cased, as FLARE requires)")
    parser.add_argument("--from-work", metavar="WORK", help="first export WORK's trained stages into --weights")
    parser.add_argument("--openvino", action="store_true",
                        help="add the networks converted to OpenVINO IR (predict.runtime; needs segpipe[openvino])")
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
    from pipeline.submission.image import TARGETS

    target = args.target or ("flare" if args.task == "flare" else "mlcube")
    if TARGETS[target] != args.task:
        raise SegpipeError(f"--target {target} serves --task {TARGETS[target]}, not {args.task}")
    if target == "grand-challenge" and not args.gc_output_slug:
        raise SegpipeError("--target grand-challenge needs --gc-output-slug SLUG (the algorithm's output image "
                           "socket, e.g. abdominal-organ-segmentation)")
    if args.gc_output_slug:
        from pipeline.fsutil import check_case_id

        check_case_id(args.gc_output_slug)
    weights = Path(args.weights) if args.weights else find_weights(default_weights_root(), args.task)
    weights = find_weights(weights, args.task)
    if args.openvino:
        from pipeline.inference.openvino_net import write_openvino

        shapes = write_openvino(weights)
        print(f"package: OpenVINO IR in {weights} for {', '.join(f'{k} {v}' for k, v in shapes.items()) or 'no stage'}")
    loaded = load_weights(weights, "cpu")  # hashes + state dicts checked before anything is built
    if loaded.task != args.task:
        raise SegpipeError(f"{weights}: weights for task {loaded.task!r}, not {args.task!r}")
    if args.no_image:
        return 0

    from pipeline.docker_engine import connect, require_image
    from pipeline.runners import default_user
    from pipeline.submission.contract import check_predictions
    from pipeline.submission.gc import model_tarball
    from pipeline.submission.image import build_image, save_image, smoke_run, team_name
    from pipeline.submission.mlcube import write_mlcube

    team = team_name(args.team)
    tag = f"{team}:latest"
    base = args.base or os.environ.get("SEGPIPE_IMAGE", "segpipe:dev")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    client = connect(timeout=600)
    require_image(client, base, f"build the project image first: docker build -t {base} .")
    image_id = build_image(client, base, weights.resolve(), tag, args.task, target, args.gc_output_slug)
    print(f"package: built {tag} ({image_id[:19]}) for {target} from {base} with weights {weights}")
    model = None
    if target == "grand-challenge":
        model = model_tarball(weights, out / "model.tar.gz")
        print(f"package: model tarball {model} ({model.stat().st_size / 2**20:.1f} MiB; grand-challenge "
              "extracts it to /opt/ml/model)")
    if not args.no_smoke:
        with tempfile.TemporaryDirectory(prefix="segpipe-smoke-") as tmp:
            model_dir = None
            if model is not None:  # mounted as the platform does, so the tarball's layout is checked too
                import tarfile

                model_dir = Path(tmp) / "model"
                with tarfile.open(model) as tar:
                    tar.extractall(model_dir, filter="data")
                for p in [model_dir, *model_dir.rglob("*")]:
                    p.chmod(0o755 if p.is_dir() else 0o644)
            inputs, outputs, logs = smoke_run(client, tag, target, Path(tmp), args.user or default_user(), args.gpus,
                                              model_dir)
            check = check_predictions(args.task, outputs, inputs, convention=loaded.manifest.get("label_convention", "2023"),
                                      mode=target if target == "grand-challenge" else None,
                                      gc_output_slug=args.gc_output_slug)
            if not check.ok:
                raise SegpipeError(f"smoke run of {tag}: output breaks the contract: {'; '.join(check.problems)}")
            if model_dir is not None and "(weights /opt/ml/model" not in logs:
                raise SegpipeError(f"smoke run of {tag}: the weights in /opt/ml/model were not used")
            print(f"package: smoke run of {tag} as {target} starts it passed ({check.checked} case(s), contract checked)")
    if target == "mlcube":
        cube, params = write_mlcube(out / "mlcube", tag, name=team)
        print(f"package: MLCube files {cube} and {params}")
    if not args.no_save:
        dest = save_image(client, tag, out / f"{team}.tar.gz")
        print(f"package: saved {tag} to {dest} ({dest.stat().st_size / 2**20:.0f} MiB)")
    return 0
