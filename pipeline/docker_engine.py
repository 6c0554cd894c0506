"""The one way segpipe reaches a Docker engine through the SDK (efficiency runs, the docker
backend of the stage graph, packaging): connect, or fail with one line that says what to do;
and the one translation of `docker run` options into the SDK's container arguments."""

from __future__ import annotations

from typing import Any

from pipeline.errors import SegpipeError


def connect(timeout: int = 120, hint: str = "set DOCKER_HOST") -> Any:
    """A client for the engine in DOCKER_HOST (or the default socket) that has answered a ping."""
    import docker

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:
        raise SegpipeError(f"no Docker engine answers ({' '.join(str(exc).split())[:200]}); {hint}") from None
    return client


def require_image(client: Any, image: str, hint: str) -> None:
    import docker

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise SegpipeError(f"image {image}: not found on the engine ({hint})") from None


def device_requests(gpus: str | None) -> list[Any] | None:
    """`--gpus` as the docker CLI reads it: all, N, device=I[,J], none; auto = all where
    nvidia-smi exists, else none."""
    import shutil

    import docker

    if gpus is None or gpus in ("none", ""):
        return None
    if gpus == "auto":
        return device_requests("all") if shutil.which("nvidia-smi") else None
    if gpus == "all":
        return [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
    if gpus.isdigit():
        return [docker.types.DeviceRequest(count=int(gpus), capabilities=[["gpu"]])]
    if gpus.startswith("device="):
        ids = [v.strip() for v in gpus.split("=", 1)[1].strip("\"'").split(",") if v.strip()]
        if ids:
            return [docker.types.DeviceRequest(device_ids=ids, capabilities=[["gpu"]])]
    raise SegpipeError(f"--gpus {gpus!r}: use auto, all, none, a count, or device=I[,J]")


def container_kwargs(*, command: list[str], volumes: dict[str, dict[str, str]] | list[str], image: str | None = None,
                     name: str | None = None, user: str | None = None, gpus: str | None = None,
                     network: str | None = None, shm_size: str | None = None, memory: str | None = None,
                     read_only: bool = False, tmpfs: dict[str, str] | None = None, working_dir: str | None = None,
                     environment: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """`docker run` options → the SDK's containers.run/create keyword arguments (detached).
    An option left at None is left out, so docker's own default applies, as on its command line."""
    kwargs: dict[str, Any] = {"command": list(command), "volumes": volumes, "detach": True}
    optional = {"image": image, "name": name, "user": user, "network_mode": network, "shm_size": shm_size,
                "mem_limit": memory, "tmpfs": tmpfs, "working_dir": working_dir, "environment": environment,
                "labels": labels, "device_requests": device_requests(gpus)}
    kwargs |= {k: v for k, v in optional.items() if v}
    if read_only:
        kwargs["read_only"] = True
    return kwargs
