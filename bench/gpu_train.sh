#!/usr/bin/env bash
# GPU check for issue #4: training iterations/s and peak GPU memory of the fine model (and the CPS
# pair) with AMP on a full-size synthetic sample. Standalone: repo code + torch with CUDA, no
# dataset, no network, no installs. Runs well under 5 minutes.
#
#   bash bench/gpu_train.sh                 # size 96×192×192 (configs/flare.yaml fine_size), batch 2
#   SIZE=48,64,64 DEVICE=cpu ITERS=2 bash bench/gpu_train.sh   # CPU smoke run of the script itself
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" - "$@" <<'PYEOF'
import os, subprocess, threading, time

import torch

from fine_seg import build_model
from pipeline.nn import count_parameters
from pipeline.training.amp import amp_policy
from pipeline.training.cps import cps_loss
from pipeline.training.losses import supervised_loss
from pipeline.training.optim import build_optimizer, param_groups

size = tuple(int(v) for v in os.environ.get("SIZE", "96,192,192").split(","))
batch = int(os.environ.get("BATCH", "2"))
iters = int(os.environ.get("ITERS", "20"))
warm = int(os.environ.get("WARMUP", "5"))
k = int(os.environ.get("CLASSES", "14"))
device = torch.device(os.environ.get("DEVICE", "cuda" if torch.cuda.is_available() else "cpu"))
cuda = device.type == "cuda"
torch.backends.cudnn.benchmark = True


class SmiSampler:
    """Whole-device memory used, sampled by nvidia-smi every 0.1 s (as the FLARE efficiency harness)."""

    def __init__(self) -> None:
        self.peak, self._stop = 0, threading.Event()
        self.ok = cuda and subprocess.run(["which", "nvidia-smi"], capture_output=True).returncode == 0
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        idx = str(device.index or 0)
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "-i", idx, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                self.peak = max(self.peak, int(out.stdout.strip().splitlines()[0]))
            time.sleep(0.1)

    def __enter__(self):
        if self.ok:
            self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.ok:
            self._t.join(timeout=5)


def run(mode: str, nets: int, compile_: bool = False) -> dict:
    torch.manual_seed(0)
    models = [build_model({"in_channels": 1, "num_classes": k}).to(device) for _ in range(nets)]
    params = sum(count_parameters(m) for m in models)
    if compile_:
        models = [torch.compile(m) for m in models]
    policy = amp_policy(device, mode)
    opt = build_optimizer(param_groups(models, 1e-4), "adamw", 1e-3)
    x = torch.randn(batch * (2 if nets == 2 else 1), 1, *size, device=device)
    y = torch.randint(0, k, (batch, *size), device=device, dtype=torch.uint8)
    mask = torch.ones(x.shape[0], 1, dtype=torch.bool, device=device)

    def step() -> None:
        with policy.autocast():
            outs = [m(x, mask) for m in models]
        loss = sum(supervised_loss(o[:batch], y) for o in outs)
        if nets == 2:
            loss = loss + cps_loss(outs[0], outs[1])
        policy.backward_step(loss, opt, models, grad_clip=12.0)

    for _ in range(warm):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with SmiSampler() as smi:
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
    del models, opt, x, y
    if cuda:
        torch.cuda.empty_cache()
    return {"mode": policy.name + (" +compile" if compile_ else ""), "nets": nets, "params_M": params / 1e6,
            "it_s": iters / dt, "samples_s": iters * batch / dt, "peak_alloc_MiB": peak,
            "smi_peak_MiB": smi.peak if smi.ok else float("nan")}


name = torch.cuda.get_device_name(device) if cuda else "cpu"
print(f"# fine model training step, sample 1×{'×'.join(map(str, size))}, batch {batch} labeled"
      f" (+{batch} unlabeled for CPS), {k} classes, {iters} timed iterations after {warm} warm-up; {name}, torch {torch.__version__}")
modes = ["bf16", "fp16", "fp32"] if cuda else ["fp32"]
if cuda and not torch.cuda.is_bf16_supported():
    modes.remove("bf16")
rows = []
t_start = time.time()
for mode in modes:
    for nets in (1, 2):
        try:
            rows.append(run(mode, nets))
        except torch.OutOfMemoryError:
            rows.append({"mode": mode, "nets": nets, "params_M": float("nan"), "it_s": float("nan"),
                         "samples_s": float("nan"), "peak_alloc_MiB": float("nan"), "smi_peak_MiB": float("nan")})
            torch.cuda.empty_cache()
if cuda and os.environ.get("COMPILE", "0") == "1":
    rows.append(run(modes[0], 1, compile_=True))
print(f"{'amp':<14}{'setup':<14}{'params M':>9}{'it/s':>8}{'samples/s':>11}{'max_alloc MiB':>15}{'nvidia-smi MiB':>16}")
for r in rows:
    setup = "CPS (2 nets)" if r["nets"] == 2 else "supervised"
    print(f"{r['mode']:<14}{setup:<14}{r['params_M']:>9.2f}{r['it_s']:>8.2f}{r['samples_s']:>11.2f}"
          f"{r['peak_alloc_MiB']:>15.0f}{r['smi_peak_MiB']:>16.0f}")
print(f"# total {time.time() - t_start:.0f} s")
PYEOF
