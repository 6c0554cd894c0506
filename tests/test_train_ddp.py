"""Two gloo processes under torchrun train on different shards and end with identical weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_two_gloo_ranks_stay_identical(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "SEGPIPE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(HERE / "train_helpers.py"), str(out), "--epochs", "2", "--cps",
           "--ddp"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    w0, w1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0), "ranks diverged"
    ckpt = load_file(str(out / "checkpoints" / "epoch_0002" / "model.safetensors"))
    assert all(torch.equal(ckpt[k], w0[k]) for k in w0)  # rank 0 checkpointed what it held
    # and the weights did move away from the shared initialisation
    sys.path.insert(0, str(HERE))
    from train_helpers import coarse_spec, make_config

    from pipeline.training.trainer import build_pair

    init = build_pair(coarse_spec(make_config(2, cps=True, uif=True)), 2, seed=0).state_dict()
    assert sum(not torch.equal(init[k], w0[k]) for k in w0 if k.endswith("weight")) > 10

    c0 = json.loads((out / "cases_rank0.json").read_text())
    c1 = json.loads((out / "cases_rank1.json").read_text())
    assert len(c0) == len(c1) == 4  # 2 epochs × 2 steps on each rank
    for a, b in zip(c0, c1, strict=True):  # each step: the two ranks see different labeled cases
        assert not set(a) & set(b)
