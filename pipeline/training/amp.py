"""Mixed-precision policy for training: the dtype pipeline.device.amp_dtype decides (bf16 on GPUs
that support it, fp16 on older GPUs, fp32 on CPU) plus a GradScaler for fp16. No apex."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from pipeline.device import amp_dtype, autocast


@dataclass
class AmpPolicy:
    device_type: str
    dtype: torch.dtype | None  # None → fp32, autocast off
    scaler: torch.amp.GradScaler | None

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(torch.device(self.device_type), self.dtype)

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, nets: Iterable[torch.nn.Module],
                      grad_clip: float = 0.0) -> None:
        """Backward, per-network gradient clipping on unscaled gradients, optimiser step, zeroed
        gradients: the one place that knows the GradScaler's scale → unscale → step → update order."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(optimizer)
        else:
            loss.backward()
        if grad_clip:
            for net in nets:
                torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def amp_policy(device: torch.device, mode: str = "auto") -> AmpPolicy:
    """Training is strict where inference is lenient: bf16/fp16 asked for on a CPU is an error."""
    if device.type != "cuda" and mode in ("bf16", "fp16"):
        raise ValueError(f"amp={mode} needs a CUDA device (got {device.type}); use auto or fp32")
    dtype = amp_dtype(device, mode)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return AmpPolicy(device.type, dtype, scaler)
