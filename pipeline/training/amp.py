"""Mixed-precision policy with torch.amp: bf16 on GPUs that support it, fp16 + GradScaler on older
GPUs, fp32 on CPU (CPU autocast would only slow 3D convs down). No apex."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass
class AmpPolicy:
    device_type: str
    dtype: torch.dtype | None  # None → fp32, autocast off
    scaler: torch.amp.GradScaler | None

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

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
    if device.type != "cuda":
        if mode in ("bf16", "fp16"):
            raise ValueError(f"amp={mode} needs a CUDA device (got {device.type}); use auto or fp32")
        return AmpPolicy(device.type, None, None)
    if mode == "fp32":
        return AmpPolicy("cuda", None, None)
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return AmpPolicy("cuda", torch.bfloat16, None)
    return AmpPolicy("cuda", torch.float16, torch.amp.GradScaler("cuda"))
