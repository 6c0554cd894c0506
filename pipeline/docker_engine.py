"""The one way segpipe reaches a Docker engine through the SDK (efficiency runs, the docker
backend of the stage graph, packaging): connect, or fail with one line that says what to do."""

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
