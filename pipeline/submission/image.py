"""The submission image: the project image plus one weights folder, built through the docker SDK,
smoke-tested the way the organisers run it, and saved as `teamname.tar.gz` (FLARE).

The weights go to /opt/submission/model_weights/<name> and SEGPIPE_WEIGHTS points at that
folder's parent, so the packaged model is the only candidate (`find_weights` never falls back
to the shipped demo weights inside the image).
"""

from __future__ import annotations

import gzip
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pipeline.errors import SegpipeError
from pipeline.fsutil import atomic_path
from pipeline.log import get_logger

log = get_logger("package")
WEIGHTS_IN_IMAGE = "/opt/submission/model_weights"
_TEAM = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")


def team_name(name: str) -> str:
    """FLARE wants the image (and tarball) named after the team in lower case."""
    lowered = name.strip().lower()
    if not _TEAM.match(lowered):
        raise SegpipeError(f"team name {name!r}: use letters, digits, '_', '.', '-' (an image name, lower-cased)")
    return lowered


def dockerfile(base_image: str, weights_name: str, task: str) -> str:
    return (
        f"FROM {base_image}\n"
        f'LABEL org.segpipe.task="{task}" org.segpipe.weights="{weights_name}"\n'
        f"COPY --chown=0:0 weights/ {WEIGHTS_IN_IMAGE}/{weights_name}/\n"
        f"ENV SEGPIPE_WEIGHTS={WEIGHTS_IN_IMAGE}\n"
    )


def build_image(client: Any, base_image: str, weights: Path, tag: str, task: str) -> str:
    """docker build of a two-line context (Dockerfile + weights/); returns the image id."""
    import docker

    with tempfile.TemporaryDirectory(prefix="segpipe-package-") as tmp:
        ctx = Path(tmp)
        shutil.copytree(weights, ctx / "weights")
        for p in (ctx / "weights").rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        (ctx / "Dockerfile").write_text(dockerfile(base_image, weights.name, task))
        try:
            image, logs = client.images.build(path=str(ctx), tag=tag, rm=True, forcerm=True, pull=False)
        except docker.errors.BuildError as exc:
            tail = " | ".join(str(x.get("stream", x.get("error", ""))).strip() for x in list(exc.build_log)[-5:])
            raise SegpipeError(f"building {tag} from {base_image} failed: {exc.msg} ({tail})") from None
        except docker.errors.APIError as exc:
            raise SegpipeError(f"building {tag}: {' '.join(str(exc.explanation or exc).split())}") from None
    for entry in logs:
        if "stream" in entry and entry["stream"].strip():
            log.debug("build: %s", entry["stream"].rstrip())
    return str(image.id)


def smoke_run(client: Any, tag: str, task: str, workdir: Path, user: str, gpus: bool = False) -> tuple[Path, Path, str]:
    """One synthetic case through the image as the organisers run it (FLARE: `sh predict.sh`
    with /workspace/inputs read-only; BraTS: the MLCube `infer` task), no network.
    Returns (input folder, output folder, logs); raises SegpipeError on a non-zero exit."""
    import os

    from pipeline.synth import write_brats_dataset, write_flare_dataset

    src, inputs, outputs = workdir / "synth", workdir / "inputs", workdir / "outputs"
    for d in (inputs, outputs):
        d.mkdir(parents=True, exist_ok=True)
    if task == "flare":
        write_flare_dataset(src, cases=1, seed=7, size="small")
        for p in sorted((src / "images").glob("*_0000.nii.gz")):
            shutil.copy2(p, inputs / p.name)
        command = ["/bin/bash", "-c", "sh predict.sh"]
        volumes = {str(inputs): {"bind": "/workspace/inputs", "mode": "ro"},
                   str(outputs): {"bind": "/workspace/outputs", "mode": "rw"}}
    else:
        write_brats_dataset(src, cases=1, seed=7, size="small")
        for case in sorted(p for p in src.iterdir() if p.is_dir()):
            (inputs / case.name).mkdir(exist_ok=True)
            for f in case.iterdir():
                # the seg file stays out, and so does t1n: the missing-modality path is exercised
                if not f.name.endswith(("-seg.nii.gz", "_seg.nii.gz", "-t1n.nii.gz")):
                    shutil.copy2(f, inputs / case.name / f.name)
        command = ["infer", "--data_path=/mlcube_io0", "--output_path=/mlcube_io2"]
        volumes = {str(inputs): {"bind": "/mlcube_io0", "mode": "ro"},
                   str(outputs): {"bind": "/mlcube_io2", "mode": "rw"}}
    if os.getuid() == 0:
        uid, _, gid = user.partition(":")
        os.chown(outputs, int(uid), int(gid or uid))
    kwargs: dict[str, Any] = {"volumes": volumes, "user": user, "network_mode": "none", "detach": True}
    if gpus:
        from docker.types import DeviceRequest

        kwargs["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    container = client.containers.run(tag, command, **kwargs)
    try:
        code = int(container.wait().get("StatusCode", -1))
        logs = container.logs().decode("utf-8", "replace")
    finally:
        container.remove(force=True)
    if code != 0:
        tail = " | ".join(logs.strip().splitlines()[-5:])
        raise SegpipeError(f"smoke run of {tag} exited with {code}: {tail}")
    return inputs, outputs, logs


def save_image(client: Any, tag: str, dest: Path) -> Path:
    """`docker save tag | gzip > dest`, streamed and atomic."""
    image = client.images.get(tag)
    with atomic_path(dest) as tmp, gzip.open(tmp, "wb", compresslevel=6) as out:
        for chunk in image.save(named=True):
            out.write(chunk)
    return dest
