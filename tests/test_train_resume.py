"""Kill -9 after a checkpoint, resume, and end bit-for-bit where an uninterrupted run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SCRIPT = HERE / "train_helpers.py"


def _run(out: Path, *extra: str, wait: bool = True) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "SEGPIPE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(out), "--cps", "--cutmix", "--epochs", "3", *extra], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if wait:
        stdout, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, stdout
    return proc


def _final_weights(out: Path) -> dict:
    return load_file(str(out / "checkpoints" / "epoch_0003" / "model.safetensors"))


@pytest.mark.timeout(400)
def test_kill_and_resume_is_bit_exact(tmp_path: Path) -> None:
    full, killed = tmp_path / "full", tmp_path / "killed"
    _run(full)

    proc = _run(killed, "--sleep-after-epoch", "2", wait=False)
    deadline = time.time() + 300
    while not (killed / "READY").exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.time() < deadline, "training never reached its second checkpoint"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "checkpoints" / "epoch_0003").exists()  # killed mid-run, not after it
    assert (killed / "checkpoints" / "epoch_0002").exists()

    _run(killed, "--resume")
    a, b = _final_weights(full), _final_weights(killed)
    assert a.keys() == b.keys()
    mismatched = [k for k in a if not (a[k] == b[k]).all()]
    assert not mismatched, f"{len(mismatched)} tensors differ after resume, e.g. {mismatched[:3]}"
    # CPS (CutMix boxes seeded by the global step) + UIF state came through the checkpoint too
    assert (killed / "uif" / "ranking.json").read_text() == (full / "uif" / "ranking.json").read_text()
