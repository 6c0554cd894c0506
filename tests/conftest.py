"""Fixtures shared across the test suite."""

from __future__ import annotations

import os

import pytest


def _no_engine(reason: str) -> None:
    # `.ci/run` sets SEGPIPE_REQUIRE_DOCKER=1 for its container phase: there a missing engine
    # or image is a broken CI, not a reason to skip.
    if os.environ.get("SEGPIPE_REQUIRE_DOCKER") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client():
    """A docker SDK client for the engine DOCKER_HOST names; skips when none answers."""
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:  # DockerException, requests' connection errors, ...
        _no_engine(f"no Docker engine answers ({exc.__class__.__name__}: {' '.join(str(exc).split())[:160]})")
    yield client
    client.close()


@pytest.fixture(scope="session")
def segpipe_image(docker_client) -> str:
    """Tag of the built segpipe image (SEGPIPE_TEST_IMAGE, which `.ci/run` exports)."""
    tag = os.environ.get("SEGPIPE_TEST_IMAGE")
    if not tag:
        _no_engine("SEGPIPE_TEST_IMAGE is not set (bash .ci/run builds the image and sets it)")
    import docker

    try:
        docker_client.images.get(tag)
    except docker.errors.ImageNotFound:
        pytest.fail(f"SEGPIPE_TEST_IMAGE={tag}: no such image on the engine", pytrace=False)
    return tag


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: one thread is faster, and much faster on a shared, loaded machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
