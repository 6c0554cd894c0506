"""`docker compose run prepare` on a real engine: a small synthetic FLARE set mounted read-only,
the work folder read-write for the container's uid 1000, and the index checked from the host.

Marked `docker`: `.ci/run` builds the image and exports SEGPIPE_TEST_IMAGE; without an engine
(or without that variable) the fixtures from conftest.py skip."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from prepare_fixtures import tree_snapshot

from pipeline.samples import SampleStore

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.docker


def _compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60).returncode == 0


def _run_prepare(segpipe_image: str, docker_client, data: Path, work: Path, project: str) -> tuple[int, str]:
    """The compose service when the compose CLI is there, else the same container via the SDK."""
    if _compose_available():
        env = {**os.environ, "SEGPIPE_IMAGE": segpipe_image, "SEGPIPE_DATA": str(data), "SEGPIPE_WORK": str(work),
               "SEGPIPE_TASK": "flare"}
        proc = subprocess.run(["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "-p", project,
                               "run", "--rm", "--no-deps", "prepare"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        subprocess.run(["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "-p", project, "down",
                        "--remove-orphans"], cwd=ROOT, env=env, capture_output=True, timeout=120)
        return proc.returncode, proc.stdout + proc.stderr
    import docker

    try:
        out = docker_client.containers.run(
            segpipe_image, ["segpipe", "prepare", "--data", "/data", "--work", "/work",
                            "--config", "/opt/segpipe/configs/flare.yaml"],
            user="1000:1000", network_mode="none", read_only=True, tmpfs={"/tmp": ""}, remove=True,
            volumes={str(data): {"bind": "/data", "mode": "ro"}, str(work): {"bind": "/work", "mode": "rw"}},
            stdout=True, stderr=True)
        return 0, out.decode(errors="replace")
    except docker.errors.ContainerError as exc:
        return exc.exit_status, (exc.stderr or b"").decode(errors="replace")


def test_compose_prepare_with_read_only_data(docker_client, segpipe_image, tmp_path):
    from pipeline.synth import write_flare_dataset

    data, work = tmp_path / "data", tmp_path / "work"
    write_flare_dataset(data, cases=2, unlabeled=1, size="small", seed=5)
    work.mkdir()
    work.chmod(0o777)  # the container runs as uid 1000
    for p in [tmp_path, data, *data.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    before = tree_snapshot(data)

    rc, log = _run_prepare(segpipe_image, docker_client, data, work, f"segpipe-prep-{os.getpid()}")
    assert rc == 0, log[-4000:]
    assert tree_snapshot(data) == before  # the data folder was never written

    report = json.loads((work / "prepare_report.json").read_text())
    assert report["data"] == "/data" and report["prepared"] == 3 and not report["failed"]
    store = SampleStore(work)  # read from the host: records decode, arrays load without pickle
    assert store.case_ids("labeled") == ["FLARE22_Tr_0001", "FLARE22_Tr_0002"]
    assert store.case_ids("unlabeled") == ["FLARE22_Unl_0001"]
    for cid in store.case_ids("all"):
        rec = store.record(cid)
        assert rec["sources"]["ct"]["path"].startswith("/data/")
        coarse = store.load(cid, "coarse")
        assert coarse.image.shape == (1, 64, 128, 128) and np.isfinite(np.asarray(coarse.image)).all()
        fine = store.load(cid, "fine")
        assert fine.image.shape == (1, 96, 192, 192)
        assert (fine.label is None) == (cid == "FLARE22_Unl_0001")
    leftovers = [p for p in (work / "samples").rglob(".*")]
    assert not leftovers
