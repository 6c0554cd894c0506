"""Stage-graph logic: skip, resume, --from/--to, invalidation by config or data changes.

A recording fake runner stands in for the stages (the real stages are exercised by the demo
test and the docker-backend test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import SegpipeError
from pipeline.stages import Folders, StageFailed, build_graph, describe, read_marker, run_graph


class Recorder:
    def __init__(self, fail: str | None = None, code: int = 3):
        self.calls: list[tuple[str, bool]] = []
        self.fail, self.code = fail, code

    def __call__(self, stage, folders, resume):
        self.calls.append((stage.name, resume))
        if stage.name == self.fail:
            raise StageFailed(stage.name, self.code, ["line 1", "boom"])
        for ref in stage.outputs:  # play the stage's part: create what it declares
            p = folders.get(ref.role) / ref.rel if ref.rel else folders.get(ref.role)
            if p.suffix:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text("x")
            else:
                p.mkdir(parents=True, exist_ok=True)


@pytest.fixture
def folders(tmp_path: Path) -> Folders:
    for d in ("data", "input", "gt"):
        (tmp_path / d).mkdir()
    (tmp_path / "data" / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "input" / "c_0000.nii.gz").write_bytes(b"y")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("task: {name: flare}\n")
    return Folders(work=tmp_path / "work", config=cfg, data=tmp_path / "data", input=tmp_path / "input",
                   output=tmp_path / "out", gt=tmp_path / "gt")


ALL = ["prepare", "train-coarse", "train-fine", "package", "predict", "evaluate", "submit"]


def names(rec: Recorder) -> list[str]:
    return [n for n, _ in rec.calls]


def test_graph_shape_and_argv(folders):
    stages = build_graph("flare", folders)
    assert [s.name for s in stages] == ALL
    lines = describe(stages, folders)
    assert all(" pending " in line for line in lines)
    train = next(s for s in stages if s.name == "train-coarse")
    from pipeline.stages import host_path

    assert train.render(host_path(folders), resume=True)[-1] == "--resume"
    predict = next(s for s in stages if s.name == "predict").render(host_path(folders))
    assert predict[:5] == ["predict", "-i", str(folders.input), "-o", str(folders.output)]
    assert str(folders.work / "model_weights") in predict
    # no gt → no evaluate; no input → no predict/evaluate/package
    no_gt = Folders(work=folders.work, config=folders.config, data=folders.data, input=folders.input,
                    output=folders.output)
    assert "evaluate" not in [s.name for s in build_graph("flare", no_gt)]
    train_only = Folders(work=folders.work, config=folders.config, data=folders.data)
    assert [s.name for s in build_graph("flare", train_only)] == ["prepare", "train-coarse", "train-fine", "package"]


def test_rerun_skips_finished_stages(folders):
    stages = build_graph("flare", folders)
    first = Recorder()
    run_graph(stages, folders, first)
    assert names(first) == ALL
    assert read_marker(folders.work, "submit")["status"] == "done"
    second = Recorder()
    result = run_graph(stages, folders, second)
    assert second.calls == []
    assert [r.status for r in result.results] == ["skipped"] * len(ALL)


def test_done_stage_with_missing_outputs_runs_again(folders):
    stages = build_graph("flare", folders)
    run_graph(stages, folders, Recorder())
    rec = Recorder()
    run_graph(stages, folders, rec)
    assert rec.calls == []
    (folders.work / "metrics.json").unlink()
    rec = Recorder()
    run_graph(stages, folders, rec)
    assert names(rec) == ["evaluate", "submit"]


def test_failure_stops_graph_and_rerun_resumes(folders):
    stages = build_graph("flare", folders)
    rec = Recorder(fail="train-fine", code=137)
    with pytest.raises(StageFailed) as err:
        run_graph(stages, folders, rec)
    assert err.value.code == 137 and err.value.tail[-1] == "boom"
    assert names(rec) == ["prepare", "train-coarse", "train-fine"]  # nothing after the failure
    marker = read_marker(folders.work, "train-fine")
    assert marker["status"] == "running" and marker["failed"] == 137
    again = Recorder()
    run_graph(stages, folders, again)
    # finished stages skipped; the interrupted one continues (--resume), the rest run fresh
    assert again.calls[0] == ("train-fine", True)
    assert names(again) == ALL[2:]
    assert all(not resume for _, resume in again.calls[1:])


def test_config_change_reruns_everything_data_change_too(folders):
    stages = build_graph("flare", folders)
    run_graph(stages, folders, Recorder())
    folders.config.write_text("task: {name: flare}\ntrain: {seed: 1}\n")
    rec = Recorder()
    run_graph(stages, folders, rec)
    assert names(rec) == ALL and not any(r for _, r in rec.calls)  # a changed config never resumes
    # new input data: predict and what follows rerun, training does not
    (folders.input / "d_0000.nii.gz").write_bytes(b"z")
    rec = Recorder()
    run_graph(stages, folders, rec)
    assert names(rec) == ["predict", "evaluate", "submit"]


def test_overrides_and_device(folders):
    run_graph(build_graph("flare", folders, device="cpu"), folders, Recorder())
    rec = Recorder()
    run_graph(build_graph("flare", folders, device="cuda"), folders, rec)
    assert rec.calls == []  # the device is not part of a stage's identity
    rec = Recorder()
    run_graph(build_graph("flare", folders, ["train.seed=3"]), folders, rec)
    assert names(rec) == ALL


def test_from_and_to(folders):
    stages = build_graph("flare", folders)
    rec = Recorder()
    run_graph(stages, folders, rec, stop="train-coarse")
    assert names(rec) == ["prepare", "train-coarse"]
    rec = Recorder()
    run_graph(stages, folders, rec, start="predict", stop="evaluate")
    assert names(rec) == ["predict", "evaluate"]
    run_graph(stages, folders, Recorder())
    rec = Recorder()
    run_graph(stages, folders, rec, start="package")  # --from forces a rerun of done stages
    assert names(rec) == ALL[3:]
    with pytest.raises(SegpipeError, match="unknown stage"):
        run_graph(stages, folders, Recorder(), start="bogus")
    with pytest.raises(SegpipeError, match="comes after"):
        run_graph(stages, folders, Recorder(), start="predict", stop="prepare")


def test_stages_are_named_after_their_commands(folders):
    for stage in build_graph("flare", folders):
        command = stage.argv[0] if stage.argv[0] != "train" else f"train-{stage.argv[1]}"
        assert stage.name == command


def test_markers_of_the_former_stage_names_stay_up_to_date(folders):
    """A work folder finished before the rename (export → package, package → submit): its
    markers are moved and re-keyed, and a rerun skips every stage."""
    from pipeline.stages import FORMER_NAMES, marker_path, stage_key, write_marker

    stages = build_graph("flare", folders)
    run_graph(stages, folders, Recorder())
    for name in ("package", "submit"):
        marker_path(folders.work, name).unlink()
    previous = ""  # the markers as the former code wrote them: former names in keys and files
    for stage in stages:
        former = FORMER_NAMES.get(stage.name, stage.name)
        previous = stage_key(stage, folders, previous, former)
        write_marker(folders.work, former, status="done", key=previous, backend="local")
    rec = Recorder()
    result = run_graph(stages, folders, rec)
    assert rec.calls == [] and [r.status for r in result.results] == ["skipped"] * len(ALL)
    assert not marker_path(folders.work, "export").exists()
    assert sorted(p.stem for p in (folders.work / ".stages").iterdir()) == sorted(ALL)


def test_run_command_end_to_end_failure_exit_code(tmp_path, capsys):
    """`segpipe run` with a missing data folder: one-line error, not a traceback."""
    from pipeline.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: {name: flare}\n")
    assert main(["run", "--config", str(cfg), "--work", str(tmp_path / "w"), "--data", str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_local_runner_streams_and_reports_tail(folders, tmp_path):
    import io

    from pipeline.runners import local_runner
    from pipeline.stages import Stage

    buf = io.StringIO()
    bad = Stage("prepare", ("prepare", "--data", str(tmp_path / "missing"), "--work", str(tmp_path / "w")),
                {"work": "rw"})
    with pytest.raises(StageFailed) as err:
        local_runner(buf)(bad, folders, False)
    assert err.value.code == 2
    assert any("segpipe prepare: error" in line for line in err.value.tail)
    assert "segpipe prepare: error" in buf.getvalue()
    json.dumps(err.value.tail)


def test_sigterm_ends_the_stage_subprocess_and_leaves_it_resumable(tmp_path):
    """`kill` of `segpipe run` must not orphan the running stage; its marker stays "running"."""
    import os
    import signal
    import subprocess
    import sys
    import time

    fake_python = tmp_path / "fake-python"
    fake_python.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/child.pid\nexec sleep 60\n")
    fake_python.chmod(0o755)
    script = f"""
import sys
from pathlib import Path
from pipeline.runners import local_runner, sigterm_as_interrupt
from pipeline.stages import Folders, build_graph, run_graph
sigterm_as_interrupt()
cfg = Path({str(tmp_path)!r}) / "c.yaml"
cfg.write_text("task: {{name: flare}}\\n")
folders = Folders(work=Path({str(tmp_path)!r}) / "w", config=cfg)
try:
    run_graph(build_graph("flare", folders), folders, local_runner(python={str(fake_python)!r}))
except KeyboardInterrupt:
    sys.exit(130)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parent.parent)
    pid_file = tmp_path / "child.pid"
    for _ in range(200):
        if pid_file.is_file() and pid_file.read_text().strip():
            break
        time.sleep(0.05)
    child = int(pid_file.read_text())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 130
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    assert read_marker(tmp_path / "w", "train-coarse")["status"] == "running"
