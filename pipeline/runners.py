"""Backends that execute one stage: a local subprocess, or a container of the project image.

Both stream the stage's output live and keep its last lines; a non-zero exit raises
StageFailed(stage, exit code, log tail), which stops the graph. The docker backend runs the
stage exactly like docker-compose.yml's service of the same name: the same command, the same
mount points, as a non-root uid:gid, without network, with a read-only root filesystem and a
/tmp tmpfs; `--gpus` adds a DeviceRequest for all GPUs (needs nvidia-container-toolkit).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from pipeline.errors import SegpipeError
from pipeline.log import get_logger
from pipeline.stages import CONTAINER_PATHS, Folders, Stage, StageFailed, container_path, host_path

log = get_logger("run")
TAIL_LINES = 40


def sigterm_as_interrupt() -> None:
    """SIGTERM (kill, `docker stop`, a scheduler's time limit) ends the running stage's subprocess
    or container the way Ctrl-C does, instead of orphaning it; its marker stays "running", so
    the next run resumes it."""
    import signal

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def local_runner(out: TextIO | None = None, python: str = sys.executable) -> Callable[[Stage, Folders, bool], None]:
    """`python -m pipeline <argv>` per stage, stdout+stderr merged and echoed line by line."""

    def run(stage: Stage, folders: Folders, resume: bool) -> None:
        stream = out or sys.stdout
        argv = [python, "-m", "pipeline", *stage.render(host_path(folders), resume)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                              env=env) as proc:
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    tail.append(line.rstrip("\n"))
                    stream.write(line)
                    stream.flush()
            except BaseException:  # Ctrl-C, SIGTERM (sigterm_as_interrupt), a broken output pipe
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                raise
            code = proc.wait()
        if code != 0:
            raise StageFailed(stage.name, code, list(tail))

    return run


@dataclass
class DockerOptions:
    image: str = "segpipe:dev"
    user: str | None = None  # "uid:gid"; None → the caller's own ids (1000:1000 when that is root)
    gpus: bool = False
    shm_size: str = "8g"  # training stages only; the others keep docker's 64 MB, like the FLARE runner
    environment: dict[str, str] | None = None


def default_user() -> str:
    uid, gid = os.getuid(), os.getgid()
    return "1000:1000" if uid == 0 else f"{uid}:{gid}"


def volumes_for(stage: Stage, folders: Folders) -> dict[str, dict[str, str]]:
    """host path → {"bind": container path, "mode": ro|rw} for the folders the stage touches."""
    vols: dict[str, dict[str, str]] = {}
    for role, mode in stage.mounts.items():
        path = folders.get(role)
        if path is None:
            raise SegpipeError(f"stage {stage.name}: no {role} folder given")
        if role == "config":
            vols[str(path.resolve())] = {"bind": f"{CONTAINER_PATHS['config']}/{path.name}", "mode": "ro"}
        else:
            vols[str(path.resolve())] = {"bind": CONTAINER_PATHS[role], "mode": mode}
    return vols


def container_kwargs(stage: Stage, folders: Folders, opts: DockerOptions, resume: bool) -> dict[str, Any]:
    """The containers.run arguments of one stage (kept separate so tests can read them)."""
    from pipeline.docker_engine import container_kwargs as docker_run

    return docker_run(
        command=["segpipe", *stage.render(container_path(folders), resume)], volumes=volumes_for(stage, folders),
        user=opts.user or default_user(), network="none", read_only=True, tmpfs={"/tmp": ""},
        working_dir="/workspace", environment={"PYTHONUNBUFFERED": "1", **(opts.environment or {})},
        labels={"org.segpipe.stage": stage.name}, shm_size=opts.shm_size if stage.shm else None,
        gpus="all" if opts.gpus and stage.gpu else None,
    )


def _prepare_writable(stage: Stage, folders: Folders, user: str) -> None:
    """Create the writable folders; as root, hand them to the container's uid so it can write."""
    for role, mode in stage.mounts.items():
        path = folders.get(role)
        if mode != "rw" or path is None:
            continue
        path.mkdir(parents=True, exist_ok=True)
        if os.getuid() == 0:
            uid, _, gid = user.partition(":")
            for root, dirs, files in os.walk(path):
                for name in [".", *dirs, *files]:
                    os.chown(os.path.join(root, name), int(uid), int(gid or uid), follow_symlinks=False)


def docker_runner(client: Any, opts: DockerOptions, out: TextIO | None = None) -> Callable[[Stage, Folders, bool], None]:
    """Each stage as a detached container of opts.image; logs streamed, exit code checked, removed."""
    import docker

    def run(stage: Stage, folders: Folders, resume: bool) -> None:
        stream = out or sys.stdout
        kwargs = container_kwargs(stage, folders, opts, resume)
        _prepare_writable(stage, folders, kwargs["user"])
        try:
            container = client.containers.run(opts.image, **kwargs)
        except docker.errors.ImageNotFound:
            raise SegpipeError(f"stage {stage.name}: image {opts.image} not found (build it: docker build -t "
                               f"{opts.image} .)") from None
        except docker.errors.APIError as exc:
            raise SegpipeError(f"stage {stage.name}: the engine refused the container "
                               f"({' '.join(str(exc.explanation or exc).split())})") from None
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        pending = ""
        try:
            for chunk in container.logs(stream=True, follow=True):
                text = pending + chunk.decode("utf-8", "replace")
                *lines, pending = text.split("\n")
                for line in lines:
                    tail.append(line)
                    stream.write(line + "\n")
                stream.flush()
            if pending:
                tail.append(pending)
                stream.write(pending + "\n")
            code = int(container.wait().get("StatusCode", -1))
        except KeyboardInterrupt:
            container.stop(timeout=10)
            raise
        finally:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
        if code != 0:
            raise StageFailed(stage.name, code, list(tail))

    return run
