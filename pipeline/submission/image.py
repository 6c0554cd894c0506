"""The submission image: the project image plus one weights folder, built through the docker SDK,
smoke-tested the way each platform runs it, and saved as `teamname.tar.gz`.

| target          | how the platform starts it                                   | mounts                                   |
| flare           | `/bin/bash -c "sh predict.sh"`                               | /workspace/inputs (ro), /workspace/outputs |
| mlcube          | `infer --data_path=/mlcube_io0 --output_path=/mlcube_io2`    | /mlcube_io0 (ro), /mlcube_io2            |
| grand-challenge | no command; read-only root, writable /tmp, default /dev/shm | /input (ro), /output, /opt/ml/model (ro) |
| brats2025       | no command                                                   | /input (ro), /output                     |
All without network, as a non-root user.

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


TARGETS: dict[str, str] = {"flare": "flare", "mlcube": "brats", "grand-challenge": "flare", "brats2025": "brats"}
GC_INPUT_SLUG = "ct-image"  # the smoke run's input socket (any slug works: the image reads what is mounted)


def dockerfile(base_image: str, weights_name: str, task: str, target: str | None = None,
               gc_output_slug: str | None = None) -> str:
    lines = [
        f"FROM {base_image}",
        f'LABEL org.segpipe.task="{task}" org.segpipe.weights="{weights_name}"'
        + (f' org.segpipe.target="{target}"' if target else ""),
        f"COPY --chown=0:0 weights/ {WEIGHTS_IN_IMAGE}/{weights_name}/",
        f"ENV SEGPIPE_WEIGHTS={WEIGHTS_IN_IMAGE}",
    ]
    if gc_output_slug:  # `segpipe entry` writes /output/images/<this>/<uuid>.mha
        lines.append(f"ENV SEGPIPE_GC_OUTPUT_SLUG={gc_output_slug}")
    return "\n".join(lines) + "\n"


def build_image(client: Any, base_image: str, weights: Path, tag: str, task: str, target: str | None = None,
                gc_output_slug: str | None = None) -> str:
    """docker build of a two-line context (Dockerfile + weights/); returns the image id."""
    import docker

    with tempfile.TemporaryDirectory(prefix="segpipe-package-") as tmp:
        ctx = Path(tmp)
        shutil.copytree(weights, ctx / "weights")
        for p in (ctx / "weights").rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        (ctx / "Dockerfile").write_text(dockerfile(base_image, weights.name, task, target, gc_output_slug))
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


def _flare_inputs(workdir: Path) -> list[Path]:
    from pipeline.synth import write_flare_dataset

    write_flare_dataset(workdir / "synth", cases=1, seed=7, size="small")
    return sorted((workdir / "synth" / "images").glob("*_0000.nii.gz"))


def _brats_inputs(workdir: Path, inputs: Path) -> None:
    """One synthetic case folder; the seg file stays out, and so does t1n (missing-modality path)."""
    from pipeline.synth import write_brats_dataset

    src = workdir / "synth"
    write_brats_dataset(src, cases=1, seed=7, size="small")
    for case in sorted(p for p in src.iterdir() if p.is_dir()):
        (inputs / case.name).mkdir(exist_ok=True)
        for f in case.iterdir():
            if not f.name.endswith(("-seg.nii.gz", "_seg.nii.gz", "-t1n.nii.gz")):
                shutil.copy2(f, inputs / case.name / f.name)


def _gc_inputs(workdir: Path, inputs: Path) -> None:
    """A grand-challenge job: /input/inputs.json + /input/images/<slug>/<uuid>.mha."""
    import json
    import uuid

    from pipeline.image_io import read_image, write_image

    ct = _flare_inputs(workdir)[0]
    name = str(uuid.uuid5(uuid.NAMESPACE_URL, ct.name))
    write_image(read_image(ct), inputs / "images" / GC_INPUT_SLUG / f"{name}.mha")
    socket = {"slug": GC_INPUT_SLUG, "kind": "Image", "super_kind": "Image", "relative_path": f"images/{GC_INPUT_SLUG}"}
    (inputs / "inputs.json").write_text(json.dumps([{"pk": 1, "image": {"name": f"{name}.mha"}, "value": None,
                                                     "file": None, "socket": socket}], indent=2))


def smoke_run(client: Any, tag: str, target: str, workdir: Path, user: str, gpus: bool = False,
              model_dir: Path | None = None) -> tuple[Path, Path, str]:
    """One synthetic case through the image as the target platform runs it (table above).
    Returns (input folder, output folder, logs); raises SegpipeError on a non-zero exit."""
    import os

    inputs, outputs = workdir / "inputs", workdir / "outputs"
    for d in (inputs, outputs):
        d.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"user": user, "network_mode": "none", "detach": True}
    command: list[str] | None = None  # None: the image's default command, as the platform starts it
    if target == "flare":
        for p in _flare_inputs(workdir):
            shutil.copy2(p, inputs / p.name)
        command = ["/bin/bash", "-c", "sh predict.sh"]
        volumes = {str(inputs): {"bind": "/workspace/inputs", "mode": "ro"},
                   str(outputs): {"bind": "/workspace/outputs", "mode": "rw"}}
    elif target == "mlcube":
        _brats_inputs(workdir, inputs)
        command = ["infer", "--data_path=/mlcube_io0", "--output_path=/mlcube_io2"]
        volumes = {str(inputs): {"bind": "/mlcube_io0", "mode": "ro"},
                   str(outputs): {"bind": "/mlcube_io2", "mode": "rw"}}
    elif target == "grand-challenge":
        _gc_inputs(workdir, inputs)
        volumes = {str(inputs): {"bind": "/input", "mode": "ro"}, str(outputs): {"bind": "/output", "mode": "rw"}}
        if model_dir is not None:
            volumes[str(model_dir)] = {"bind": "/opt/ml/model", "mode": "ro"}
        kwargs |= {"read_only": True, "tmpfs": {"/tmp": ""}}  # only /tmp and /output are writable
    elif target == "brats2025":
        _brats_inputs(workdir, inputs)
        volumes = {str(inputs): {"bind": "/input", "mode": "ro"}, str(outputs): {"bind": "/output", "mode": "rw"}}
    else:
        raise SegpipeError(f"unknown target {target!r} ({', '.join(TARGETS)})")
    if os.getuid() == 0:
        uid, _, gid = user.partition(":")
        os.chown(outputs, int(uid), int(gid or uid))
    kwargs["volumes"] = volumes
    if gpus:
        from pipeline.docker_engine import device_requests

        kwargs["device_requests"] = device_requests("all")
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
