"""Docker backend: the exact container each stage gets (fake engine), and a real-engine run."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from pipeline.runners import DockerOptions, docker_runner
from pipeline.stages import Folders, StageFailed, build_graph, run_graph
from tests.fake_docker import FakeDockerEngine


@pytest.fixture
def folders(tmp_path: Path) -> Folders:
    for d in ("data", "input", "gt"):
        (tmp_path / d).mkdir()
    cfg = tmp_path / "my.yaml"
    cfg.write_text("task: {name: flare}\n")
    return Folders(work=tmp_path / "work", config=cfg, data=tmp_path / "data", input=tmp_path / "input",
                   output=tmp_path / "out", gt=tmp_path / "gt")


def creates(engine: FakeDockerEngine) -> list[dict]:
    return [r.json for r in engine.calls("POST", "/containers/create")]


def test_containers_match_compose_services(folders):
    with FakeDockerEngine(logs=b"working\nstage done\n") as engine:
        out = io.StringIO()
        runner = docker_runner(engine.client(), DockerOptions(image="segpipe:test", user="1234:5678"), out)
        run_graph(build_graph("flare", folders), folders, runner, backend="docker")
        payloads = creates(engine)
    assert len(payloads) == 7
    prepare, coarse, fine, package, predict, evaluate, submit = payloads
    cfg = "/config/my.yaml"
    assert prepare["Cmd"] == ["segpipe", "prepare", "--data", "/data", "--work", "/work", "--config", cfg]
    assert sorted(prepare["HostConfig"]["Binds"]) == sorted([
        f"{folders.data}:/data:ro", f"{folders.work}:/work:rw", f"{folders.config}:{cfg}:ro"])
    assert coarse["Cmd"] == ["segpipe", "train", "coarse", "--work", "/work", "--device", "auto", "--config", cfg]
    assert predict["Cmd"][:6] == ["segpipe", "predict", "-i", "/workspace/inputs", "-o", "/workspace/outputs"]
    assert sorted(predict["HostConfig"]["Binds"]) == sorted([
        f"{folders.input}:/workspace/inputs:ro", f"{folders.output}:/workspace/outputs:rw",
        f"{folders.work}:/work:ro", f"{folders.config}:{cfg}:ro"])
    assert f"{folders.gt}:/gt:ro" in evaluate["HostConfig"]["Binds"]
    assert package["Cmd"][1:3] == ["package", "--task"] and submit["Cmd"][1] == "submit"
    for p in payloads:
        hc = p["HostConfig"]
        assert p["Image"] == "segpipe:test"
        assert p["User"] == "1234:5678"
        assert hc["NetworkMode"] == "none"
        assert hc["ReadonlyRootfs"] is True
        assert hc["Tmpfs"] == {"/tmp": ""}
        assert not hc.get("DeviceRequests")
    # only training gets the big /dev/shm (data-loader workers); predict keeps docker's 64 MB like FLARE
    assert coarse["HostConfig"]["ShmSize"] == 8 * 2**30 and fine["HostConfig"]["ShmSize"] == 8 * 2**30
    assert not predict["HostConfig"].get("ShmSize")
    assert "stage done" in out.getvalue()  # logs streamed


def test_gpus_add_device_requests_to_gpu_stages(folders):
    with FakeDockerEngine() as engine:
        runner = docker_runner(engine.client(), DockerOptions(gpus=True, user="1000:1000"), io.StringIO())
        run_graph(build_graph("flare", folders), folders, runner, stop="package")
        payloads = creates(engine)
    want = [{"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}]
    assert [p["HostConfig"].get("DeviceRequests") for p in payloads] == [None, want, want, None]


def test_failure_stops_graph_with_exit_code_and_tail(folders):
    logs = b"".join(f"line {i}\n".encode() for i in range(100)) + b"RuntimeError: out of memory"
    with FakeDockerEngine(exit_code=137, logs=logs) as engine:
        runner = docker_runner(engine.client(), DockerOptions(user="1000:1000"), io.StringIO())
        with pytest.raises(StageFailed) as err:
            run_graph(build_graph("flare", folders), folders, runner)
        assert len(creates(engine)) == 1  # nothing after the failed stage
        assert engine.calls("DELETE", r"/containers/[0-9a-f]+")  # the container is removed anyway
    assert err.value.stage == "prepare" and err.value.code == 137
    assert err.value.tail[-1] == "RuntimeError: out of memory" and len(err.value.tail) == 40


def test_engine_refusal_is_one_line(folders):
    from pipeline.errors import SegpipeError

    fail = {("POST", "/containers/create"): (500, "could not select device driver \"\" with capabilities: [[gpu]]")}
    with FakeDockerEngine(fail=fail) as engine:
        runner = docker_runner(engine.client(), DockerOptions(gpus=True, user="1000:1000"), io.StringIO())
        with pytest.raises(SegpipeError, match="could not select device driver"):
            run_graph(build_graph("flare", folders), folders, runner)


@pytest.mark.docker
def test_real_engine_prepare_and_train(docker_client, segpipe_image, tmp_path):
    """prepare → train-coarse through the docker backend on a tiny synthetic set, non-root."""
    from pipeline.synth import write_flare_dataset

    data = tmp_path / "data"
    write_flare_dataset(data, cases=3, seed=3, size="small")
    os.chmod(tmp_path, 0o755)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("task: {name: flare}\nprepare: {coarse_size: [16, 32, 32], fine_size: [16, 32, 32], folds: 3, "
                   "workers: 1}\ncoarse: {model: {channels: [4, 8]}, train: {epochs: 1, batch_size: 1}}\n"
                   "train: {num_threads: 1, val_every: 1}\n")
    folders = Folders(work=tmp_path / "work", config=cfg, data=data)
    out = io.StringIO()
    runner = docker_runner(docker_client, DockerOptions(image=segpipe_image, user="1000:1000"), out)
    result = run_graph(build_graph("flare", folders), folders, runner, stop="train-coarse", backend="docker")
    assert [r.status for r in result.results] == ["done", "done"]
    assert (folders.work / "train" / "coarse").is_dir()
    # what the stages wrote belongs to the requested user, never root (the markers are the host's)
    owners = {p.stat().st_uid for p in folders.work.rglob("*") if ".stages" not in p.parts}
    assert owners == {1000}, owners
    again = run_graph(build_graph("flare", folders), folders, runner, stop="train-coarse", backend="docker")
    assert [r.status for r in again.results] == ["skipped", "skipped"]
