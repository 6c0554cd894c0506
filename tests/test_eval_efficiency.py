"""FLARE-style efficiency: the docker SDK calls against a fake engine (exact create payload,
one case per container, timeout kill and the stuck-container scores), the organisers'
accounting, the local mode, and a real container run when an engine answers."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fake_docker import FakeDockerEngine

from evaluation import efficiency as E


def write_case(folder: Path, name: str, value: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((4, 6, 5), np.uint8)
    arr[1:3, 2:4, 1:4] = value
    path = folder / name
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    return path


def copy_like_a_submission(engine: FakeDockerEngine, container) -> None:
    """Play the container: each input `<case>_0000.nii.gz` → outputs/<case>.nii.gz."""
    inputs = Path(container.binds["/workspace/inputs"])
    outputs = Path(container.binds["/workspace/outputs"])
    seen = sorted(p.name for p in inputs.iterdir())
    engine.seen_inputs = [*getattr(engine, "seen_inputs", []), seen]
    for p in inputs.iterdir():
        (outputs / (p.name.removesuffix("_0000.nii.gz") + ".nii.gz")).write_bytes(p.read_bytes())


@pytest.fixture
def inputs(tmp_path) -> Path:
    for i in range(3):
        write_case(tmp_path / "inputs", f"FLARETs_{i:04d}_0000.nii.gz", value=1)
    return tmp_path / "inputs"


def test_create_payload_is_the_organisers_command_line(inputs, tmp_path):
    with FakeDockerEngine(on_start=copy_like_a_submission, logs=b"predicting\n") as engine:
        res = E.measure(inputs, E.DockerImage(engine.client(), "team:latest", gpus="device=1"), outputs=tmp_path / "out")
        creates = engine.calls("POST", "/containers/create")
        assert len(creates) == 3  # a fresh container per case
        body = creates[0].json
        assert body["Image"] == "team:latest"
        assert body["Cmd"] == ["/bin/bash", "-c", "sh predict.sh"]
        host = body["HostConfig"]
        binds = host["Binds"]
        assert len(binds) == 2 and binds[0].endswith(":/workspace/inputs") and binds[1].endswith(":/workspace/outputs")
        assert host["DeviceRequests"] == [{"Driver": "", "Count": 0, "DeviceIDs": ["1"], "Capabilities": [["gpu"]], "Options": {}}]
        assert host["NetworkMode"] == "default"  # the organisers set no network option
        assert "ShmSize" not in host and "Memory" not in host  # docker's 64 MB /dev/shm, no memory cap
        assert creates[0].query["name"][0].startswith("segpipe-eff-FLARETs_0000")
        # each container saw exactly its own case, nothing else
        assert engine.seen_inputs == [[f"FLARETs_{i:04d}_0000.nii.gz"] for i in range(3)]
        # every container is started, waited for, and removed, in the SDK's order
        assert engine.route_names()[:7] == ["POST /containers/create", "GET /containers/{id}/json", "POST /containers/{id}/start",
                                            "POST /containers/{id}/wait", "GET /containers/{id}/logs", "GET /containers/{id}/json",
                                            "DELETE /containers/{id}"]
        assert not engine.containers  # all removed
    assert [c["status"] for c in res["cases"]] == ["ok"] * 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"FLARETs_{i:04d}.nii.gz" for i in range(3)]
    assert sorted(p.name for p in inputs.iterdir()) == [f"FLARETs_{i:04d}_0000.nii.gz" for i in range(3)]  # inputs untouched
    case = res["cases"][0]
    assert case["exit_code"] == 0 and case["log_tail"] == "predicting\n" and case["time_s"] > 0
    assert res["gpu"]["available"] is False or shutil_which_nvidia()
    if not res["gpu"]["available"]:
        assert case["max_gpu_mb"] is None and case["auc_gpu"] is None and case["timeline"]["gpu_mb"] is None
    assert case["auc_cpu"] is not None and len(case["timeline"]["cpu"]) >= 1


def shutil_which_nvidia() -> bool:
    import shutil

    return shutil.which("nvidia-smi") is not None


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [
        ("all", [{"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}]),
        ("device=0,2", [{"Driver": "", "Count": 0, "DeviceIDs": ["0", "2"], "Capabilities": [["gpu"]], "Options": {}}]),
        ("2", [{"Driver": "", "Count": 2, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}]),
        ("none", None),
    ],
)
def test_gpu_shm_memory_and_network_options(inputs, gpus, expected):
    single = inputs.parent / "one"
    write_case(single, "a_0000.nii.gz")
    with FakeDockerEngine(on_start=copy_like_a_submission) as engine:
        E.measure(single, E.DockerImage(engine.client(), "team:latest", gpus=gpus, network="none"),
                  E.Limits(shm_size="28g", memory="28g"))
        host = engine.last("POST", "/containers/create").json["HostConfig"]
    got = host.get("DeviceRequests")
    assert got == expected  # the same payload as `docker run --gpus ...` (containers.md §7)
    assert host["ShmSize"] == 28 * 1024**3 and host["Memory"] == 28 * 1024**3
    assert host["NetworkMode"] == "none"


def test_timeout_kills_the_container_and_scores_it_as_stuck(inputs, tmp_path):
    single = tmp_path / "one"
    write_case(single, "slow_0000.nii.gz")
    with FakeDockerEngine(on_start=copy_like_a_submission, run_seconds=30) as engine:
        res = E.measure(single, E.DockerImage(engine.client(), "team:latest", gpus="none"), E.Limits(time_s=1.0),
                        outputs=tmp_path / "out")
        assert [r.method + " " + r.path.split("/")[-1] for r in engine.calls("POST")][:4] == [
            "POST create", "POST start", "POST wait", "POST kill"]
        assert engine.calls("DELETE")
    case = res["cases"][0]
    assert case["status"] == "timeout"
    assert case["time_s"] == 3600.0 and case["auc_gpu"] == 29_491_200.0 and case["auc_cpu"] == 360_000.0
    assert 0.9 < case["measured"]["time_s"] < 10  # what really happened is kept
    assert case["outputs"] == [] and not (tmp_path / "out").exists()  # its outputs do not count


def test_failed_container_and_engine_errors_do_not_stop_the_others(inputs):
    with FakeDockerEngine(exit_code=3, stderr=b"Traceback...\nRuntimeError: CUDA out of memory\n") as engine:
        res = E.measure(inputs, E.DockerImage(engine.client(), "team:latest", gpus="none"))
    assert [c["status"] for c in res["cases"]] == ["failed"] * 3
    assert res["cases"][0]["error"] == "exit code 3: RuntimeError: CUDA out of memory"
    refuse = {("POST", "/containers/create"): (500, 'could not select device driver "" with capabilities: [[gpu]]')}
    with FakeDockerEngine(fail=refuse) as engine:
        res = E.measure(inputs, E.DockerImage(engine.client(), "team:latest", gpus="all"))
    assert [c["status"] for c in res["cases"]] == ["error"] * 3
    assert "could not select device driver" in res["cases"][0]["error"]
    with FakeDockerEngine() as engine:  # exits 0 but writes nothing
        res = E.measure(inputs, E.DockerImage(engine.client(), "team:latest", gpus="none"))
    assert res["cases"][0]["status"] == "no-output"


def test_summary_uses_the_organisers_rules():
    tl = E.Timeline(0.1, t=[i * 0.1 for i in range(100)], gpu_mb=[1000.0] * 60 + [3000.0] * 38 + [9000.0] * 2,
                    cpu=[50.0] * 100, ram_mb=[100.0] * 100)
    s = E.summarise(tl)
    assert s["max_gpu_mb"] == 3000.0  # 9000 seen in only 2% of the samples: not "max"
    assert s["auc_gpu"] == pytest.approx((60 * 1000 + 38 * 3000 + 2 * 9000) * 0.1)
    assert s["auc_gpu_over_2gb"] == pytest.approx((38 * (3000 - 2048) + 2 * (9000 - 2048)) * 0.1)
    assert s["auc_cpu"] == pytest.approx(500.0) and s["max_cpu"] == 50.0
    no_gpu = E.summarise(E.Timeline(0.1, t=[0.0], gpu_mb=None, cpu=[10.0], ram_mb=[1.0]))
    assert no_gpu["max_gpu_mb"] is None and no_gpu["auc_gpu"] is None and no_gpu["auc_gpu_over_2gb"] is None


def test_cpu_probe_uses_the_organisers_formula(monkeypatch):
    import psutil

    times = iter([(100.0, 50.0, 1000.0), (100.6, 50.2, 1000.2)])  # Δuser .6, Δsystem .2, Δidle .2

    class T:
        def __init__(self, u, s, i):
            self.user, self.system, self.idle = u, s, i

    monkeypatch.setattr(psutil, "cpu_times", lambda: T(*next(times)))
    probe = E.CpuProbe()
    assert probe.read() == pytest.approx(100 - 100 * 0.2 / (1.0 + 0.1))


def test_gpu_probe_reads_total_minus_free_of_the_device(tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho \"$@\" > " + str(tmp_path / "args") + "\necho '16125, 13021'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    probe = E.GpuMemoryProbe(index=1, executable=str(fake))
    assert probe.read() == 3104.0
    assert "--id=1" in (tmp_path / "args").read_text() and "memory.total,memory.free" in (tmp_path / "args").read_text()
    assert E.GpuMemoryProbe(executable=str(tmp_path / "missing")).read() is None
    assert E.gpu_index("device=3,1") == 3 and E.gpu_index("all") == 0


def test_bad_gpus_value_is_a_clear_error(inputs):
    from pipeline.docker_engine import device_requests
    from pipeline.errors import SegpipeError

    with pytest.raises(SegpipeError, match="--gpus 'gpu1'"):
        device_requests("gpu1")


def test_local_mode_runs_predict_sh_per_case_with_the_same_accounting(inputs, tmp_path):
    from pipeline.errors import SegpipeError

    script = tmp_path / "predict.sh"
    script.write_text(
        'set -eu\nls inputs | grep -c . > /dev/null\nfor f in "$SEGPIPE_INPUTS"/*_0000.nii.gz; do\n'
        '  b=$(basename "$f" _0000.nii.gz); cp "$f" "outputs/$b.nii.gz"\ndone\n'
        'case $(ls inputs) in *0002*) sleep 20;; esac\n'
    )
    res = E.measure(inputs, E.LocalScript(script), E.Limits(time_s=1.5), outputs=tmp_path / "out")
    assert [c["status"] for c in res["cases"]] == ["ok", "ok", "timeout"]
    assert res["mode"] == "local" and res["command"] == ["sh", str(script)] and res["predict_sh"] == str(script)
    assert res["settings"]["time_limit_s"] == 1.5 and res["settings"]["gpus"] is None
    with pytest.raises(SegpipeError, match=r"--local .*nope\.sh: no such file"):
        E.LocalScript(tmp_path / "nope.sh")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["FLARETs_0000.nii.gz", "FLARETs_0001.nii.gz"]
    assert res["cases"][2]["time_s"] == 3600.0 and 1.4 < res["cases"][2]["measured"]["time_s"] < 10


def test_cli_efficiency_local_with_json_csv_and_accuracy(inputs, tmp_path):
    script = tmp_path / "predict.sh"
    script.write_text('for f in inputs/*_0000.nii.gz; do cp "$f" "outputs/$(basename "$f" _0000.nii.gz).nii.gz"; done\n')
    gt = tmp_path / "gt"
    for i in range(3):
        write_case(gt, f"FLARETs_{i:04d}.nii.gz", value=1)
    out_json, out_csv = tmp_path / "eff.json", tmp_path / "eff.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "evaluate", "efficiency", "--local", str(script), "--inputs", str(inputs),
         "--gt", str(gt), "--json", str(out_json), "--csv", str(out_csv), "--workers", "1"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "SEGPIPE_PROGRESS": "0"},
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out_json.read_text())
    assert doc["accuracy"]["mean"]["liver"]["dsc"] == 1.0  # copies of the GT score perfectly
    assert "n/a" in proc.stdout or doc["gpu"]["available"]
    assert out_csv.read_text().splitlines()[0].startswith("case,status,exit_code,time_s,max_gpu_mb")


# ---- real engine --------------------------------------------------------------------------
COPY_PREDICT_SH = """#!/bin/sh
set -eu
for f in /workspace/inputs/*_0000.nii.gz; do
  b=$(basename "$f" _0000.nii.gz)
  case "$b" in *slow*) sleep 60;; esac
  cp "$f" "/workspace/outputs/$b.nii.gz"
done
"""


@pytest.mark.docker
def test_real_engine_runs_one_container_per_case(docker_client, segpipe_image, tmp_path):
    """A throwaway image FROM the project image, whose predict.sh copies input → output, run
    through the efficiency code with the organisers' command line."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in (("Dockerfile", f"FROM {segpipe_image}\nWORKDIR /workspace\nCOPY predict.sh /workspace/predict.sh\n"),
                           ("predict.sh", COPY_PREDICT_SH)):
            info = tarfile.TarInfo(name)
            info.size = len(data.encode())
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data.encode()))
    context.seek(0)
    tag = "segpipe-eval-test:copy"
    docker_client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True)
    try:
        write_case(tmp_path / "in", "case_a_0000.nii.gz")
        write_case(tmp_path / "in", "case_b_0000.nii.gz", value=2)
        write_case(tmp_path / "in", "case_slow_0000.nii.gz")
        res = E.measure(tmp_path / "in", E.DockerImage(docker_client, tag, gpus="none", network="none"),
                        E.Limits(time_s=5), outputs=tmp_path / "out")
    finally:
        docker_client.images.remove(tag, force=True)
    status = {c["case"]: c["status"] for c in res["cases"]}
    assert status == {"case_a": "ok", "case_b": "ok", "case_slow": "timeout"}, res["cases"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case_a.nii.gz", "case_b.nii.gz"]
    out = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "case_b.nii.gz")))
    assert out.max() == 2  # the container really copied that case's file
    ok = res["cases"][0]
    assert 0 < ok["time_s"] < 60 and ok["exit_code"] == 0 and len(ok["timeline"]["cpu"]) >= 1
    assert not docker_client.containers.list(all=True, filters={"name": "segpipe-eff-"})  # nothing left behind
