"""prepare under adversity: corrupted cases among good ones, a read-only input, reruns that
resume, SIGKILL of the whole run and of a single worker, and the no-pickle rule."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
from prepare_fixtures import SMALL, ct_case, save, tree_snapshot, write_flare

from pipeline.case_index import CaseIndex, decode
from pipeline.cli import main
from pipeline.samples import SampleStore

ROOT = Path(__file__).resolve().parent.parent


def prepare(data, work, *extra: str) -> int:
    return main(["prepare", "--data", str(data), "--work", str(work), "--workers", "1", *SMALL, *extra])


def report(work) -> dict:
    return json.loads((work / "prepare_report.json").read_text())


def assert_consistent(work: Path, expected_ids: set[str]) -> None:
    """Every record's arrays exist and load without pickle; no temp or orphan file is left."""
    store = SampleStore(work)
    assert set(store.case_ids("all")) == expected_ids
    referenced = set()
    for cid in expected_ids:
        for stage in ("coarse", "fine"):
            s = store.load_stored(cid, stage)
            assert s.image.dtype == np.float32 and np.isfinite(np.asarray(s.image)).all()
            referenced.add(s.record[stage]["image"]["path"])
            if "label" in s.record[stage]:
                referenced.add(s.record[stage]["label"]["path"])
    on_disk = {str(p.relative_to(work)) for p in (work / "samples").rglob("*") if p.is_file()}
    assert on_disk == referenced, f"temp/orphan files: {sorted(on_disk - referenced)}"


def test_bad_cases_never_stop_the_run(tmp_path, capsys):
    data, work = tmp_path / "data", tmp_path / "work"
    write_flare(data, labeled=3, unlabeled=1)
    img = data / "images"
    # truncated gzip stream
    blob = (img / "FLARE22_Tr_0002_0000.nii.gz").read_bytes()
    (img / "FLARE22_Tr_0002_0000.nii.gz").write_bytes(blob[: len(blob) // 2])
    # NaN voxels in a float image, as .mha and as NIfTI (whose ITK reader turns NaN into 0)
    image, label = ct_case(seed=7)
    bad = image.astype(np.float32)
    bad[3, 4, 5] = np.nan
    save(bad, img / "FLARE22_Tr_0004_0000.mha")
    save(label, data / "labels" / "FLARE22_Tr_0004.nii.gz")
    save(bad, img / "FLARE22_Tr_0006_0000.nii.gz")
    save(label, data / "labels" / "FLARE22_Tr_0006.nii.gz")
    # an organ id that FLARE does not have
    save(image, img / "FLARE22_Tr_0005_0000.nii.gz")
    wrong = label.copy()
    wrong[wrong == 2] = 20
    save(wrong, data / "labels" / "FLARE22_Tr_0005.nii.gz")
    # not a gzip at all
    (data / "unlabeled" / "FLARE22_Unl_0009_0000.nii.gz").write_bytes(b"not an image")
    # a 2D image
    save(image[0], data / "unlabeled" / "FLARE22_Unl_0010_0000.nii.gz", spacing=(1, 1), direction=np.eye(2), origin=(0, 0))

    assert prepare(data, work) == 0
    out = capsys.readouterr().out
    failed = {f["case"]: f["reason"] for f in report(work)["failed"]}
    assert set(failed) == {"FLARE22_Tr_0002", "FLARE22_Tr_0004", "FLARE22_Tr_0005", "FLARE22_Tr_0006",
                           "FLARE22_Unl_0009", "FLARE22_Unl_0010"}
    assert "truncated" in failed["FLARE22_Tr_0002"]
    assert "non-finite" in failed["FLARE22_Tr_0004"] and "non-finite" in failed["FLARE22_Tr_0006"]
    assert "label values [20]" in failed["FLARE22_Tr_0005"]
    assert "unreadable" in failed["FLARE22_Unl_0009"] and "3D" in failed["FLARE22_Unl_0010"]
    assert "failed cases (6)" in out and "FLARE22_Tr_0005" in out  # the table, one line per case
    assert all("\n" not in r for r in failed.values())
    assert_consistent(work, {"FLARE22_Tr_0001", "FLARE22_Tr_0003", "FLARE22_Unl_0001"})
    assert prepare(data, work, "--strict") == 1  # retries only the failures, exits non-zero


def test_read_only_input_resume_and_invalidation(tmp_path):
    data, work = tmp_path / "data", tmp_path / "work"
    write_flare(data, labeled=3, unlabeled=1, validation=1)
    for p in [data, *data.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    before = tree_snapshot(data)
    try:
        assert prepare(data, work) == 0
        assert report(work)["prepared"] == 5
        # a rerun skips everything
        assert prepare(data, work) == 0
        assert (report(work)["prepared"], report(work)["skipped"]) == (0, 5)
        assert tree_snapshot(data) == before  # nothing was written to the input folder
    finally:
        for p in [data, *data.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    # a changed source file is re-prepared, alone
    image, _ = ct_case(seed=42)
    save(image, data / "unlabeled" / "FLARE22_Unl_0001_0000.nii.gz")
    assert prepare(data, work) == 0
    assert (report(work)["prepared"], report(work)["skipped"]) == (1, 4)
    # a changed setting re-prepares everything it affects (here: all)
    assert prepare(data, work, "--set", "prepare.fine_margin_mm=10") == 0
    assert report(work)["prepared"] == 5
    assert SampleStore(work).record("FLARE22_Tr_0001")["fine"]["margin_mm"] == 10
    # a case removed from the data disappears from the index and its arrays are swept
    (data / "validation" / "FLARE22_Val_0001_0000.nii.gz").unlink()
    assert prepare(data, work, "--set", "prepare.fine_margin_mm=10") == 0
    assert report(work)["removed_stale"] == ["FLARE22_Val_0001"]
    assert_consistent(work, {"FLARE22_Tr_0001", "FLARE22_Tr_0002", "FLARE22_Tr_0003", "FLARE22_Unl_0001"})


def test_work_inside_data_is_refused(tmp_path):
    write_flare(tmp_path, labeled=1, unlabeled=0)
    assert prepare(tmp_path, tmp_path / "work") == 2
    assert not (tmp_path / "work").exists()


# kill -9 -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_data(tmp_path_factory) -> Path:
    """Cases big enough that a run takes a few seconds (so it can be killed in the middle)."""
    data = tmp_path_factory.mktemp("killdata")
    write_flare(data, labeled=4, unlabeled=2, shape=(48, 192, 192))
    return data


def _start(data: Path, work: Path, workers: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipeline", "prepare", "--data", str(data), "--work", str(work),
           "--workers", str(workers), "--set", "prepare.coarse_size=[64,96,96]", "--set", "prepare.fine_size=[48,96,96]"]
    env = {**os.environ, "SEGPIPE_PROGRESS": "0", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # own process group: killpg reaches the workers


def _indexed(work: Path) -> int:
    try:
        with CaseIndex(work) as index:
            return len(index)
    except Exception:
        return 0


def _wait_for(predicate, timeout=120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _children(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _busy_worker(proc: subprocess.Popen):
    """A worker process that is using CPU, i.e. working on a case (not the resource tracker)."""
    for child in _children(proc.pid):
        try:
            if "spawn_main" in " ".join(child.cmdline()) and child.cpu_percent(interval=0.05) > 10:
                return child
        except Exception:
            continue
    return None


def test_sigkill_of_the_whole_run_then_resume(slow_data, tmp_path):
    work = tmp_path / "work"
    proc = _start(slow_data, work, workers=1)
    try:
        assert _wait_for(lambda: _indexed(work) >= 1 and _busy_worker(proc) is not None), "run never got going"
        done_before = _indexed(work)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert 1 <= done_before < 6
    # the index is consistent after the kill: every committed record is complete
    with CaseIndex(work) as index:
        assert not index.get_meta("prepare")["complete"]
        for rec in index.records().values():
            assert (work / rec["coarse"]["image"]["path"]).is_file()
    with pytest.raises(Exception, match="did not finish"):
        SampleStore(work)
    # rerun the same command: finishes, skips what was done, leaves no temp file
    proc = _start(slow_data, work, workers=2)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()
    rep = report(work)
    assert rep["skipped"] >= done_before and rep["prepared"] + rep["skipped"] == 6 and not rep["failed"]
    ids = {f"FLARE22_Tr_{i:04d}" for i in range(1, 5)} | {f"FLARE22_Unl_{i:04d}" for i in range(1, 3)}
    with CaseIndex(work) as index:
        keys = index.ids()
    assert len(keys) == len(set(keys)) == 6
    assert_consistent(work, ids)


def test_sigkill_of_one_worker_is_retried(slow_data, tmp_path):
    work = tmp_path / "work"
    proc = _start(slow_data, work, workers=2)
    try:
        found: list = []
        assert _wait_for(lambda: _indexed(work) >= 1 and found.append(_busy_worker(proc)) is None and found[-1]), \
            "no busy worker"
        found[-1].kill()
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out.decode()
    assert b"worker process died" in out  # noticed, retried alone, and the run went on
    assert not report(work)["failed"]
    ids = {f"FLARE22_Tr_{i:04d}" for i in range(1, 5)} | {f"FLARE22_Unl_{i:04d}" for i in range(1, 3)}
    assert_consistent(work, ids)


# no pickle ---------------------------------------------------------------------------------
PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def test_no_pickle_anywhere(tmp_path):
    data, work = tmp_path / "data", tmp_path / "work"
    write_flare(data, labeled=2, unlabeled=1)
    assert prepare(data, work) == 0
    with CaseIndex(work) as index:
        items = list(index.raw_items())
    assert {db for db, _, _ in items} == {"cases", "meta"}
    for db, key, value in items:
        decoded = msgpack.unpackb(value, raw=False)  # every value is msgpack...
        assert decoded == decode(value)
        assert not value.startswith(PICKLE_MAGIC), (db, key)  # ...and none is a pickle
    for path in work.rglob("*"):
        if not path.is_file() or path.parent.name == "index.lmdb":
            continue
        assert path.suffix not in (".pkl", ".pickle", ".pt", ".pth")
        head = path.read_bytes()[:2]
        assert head not in PICKLE_MAGIC, path
        if head == b"\x1f\x8b":
            assert gzip.decompress(path.read_bytes())[:2] not in PICKLE_MAGIC, path
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)  # raises on object arrays
            assert arr.dtype != object


def test_encode_refuses_non_plain_values():
    from pipeline.case_index import encode

    with pytest.raises(TypeError, match="not a plain msgpack type"):
        encode({"id": "x", "value": np.float32(1.0)})
    with pytest.raises(TypeError, match="non-finite"):
        encode({"id": "x", "value": float("nan")})
