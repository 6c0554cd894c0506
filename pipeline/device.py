"""The one device choice and the one mixed-precision decision, for training and inference alike.

Device: CUDA when asked for, or with "auto" when one is present (rank-local under torchrun);
else the CPU. AMP: bf16 on GPUs that support it, fp16 on older GPUs (training adds a
GradScaler, pipeline.training.amp), fp32 without autocast on the CPU, where autocast would
only slow 3D convolutions down unless the CPU has native bf16 (then `predict.amp: bf16` is
honoured at inference). torch.amp only, never apex.
"""

from __future__ import annotations

import contextlib

import torch

from pipeline.errors import SegpipeError

AMP_MODES = ("auto", "bf16", "fp16", "fp32")


def pick_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    """`pref` is auto | cpu | cuda; `local_rank` picks the GPU of a torchrun process."""
    if pref not in ("auto", "cpu", "cuda"):
        raise SegpipeError(f"--device {pref!r}: choose auto, cpu or cuda")
    if pref == "cuda" and not torch.cuda.is_available():
        raise SegpipeError("--device cuda: no CUDA device is available")
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX), not by emulation."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def amp_dtype(device: torch.device, mode: str = "auto", *, inference: bool = False) -> torch.dtype | None:
    """The autocast dtype for `mode` on `device`; None = fp32, autocast off. On the CPU always
    None, except an explicit `bf16` at inference on a CPU with native bf16 (the speed lever
    `bench/predict.py --amp fp32,bf16` measures; training on the CPU stays fp32: oneDNN's bf16
    conv3d backward was not reproducible here, see tests/test_gpu_twins.py)."""
    if mode not in AMP_MODES:
        raise ValueError(f"amp={mode!r}: choose one of {', '.join(AMP_MODES)}")
    if device.type != "cuda":
        return torch.bfloat16 if inference and mode == "bf16" and cpu_has_native_bf16() else None
    if mode == "fp32":
        return None
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.autocast for `dtype`, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
