"""Route CPU fp32 Conv3d through oneDNN at inference.

torch's convolution dispatcher only picks oneDNN for a CPU float input when the batch is > 1,
the kernel is larger than 3 in-plane, or N·C·D·H > 20480; a batch-1 3D U-Net with few channels
falls through to the native im2col kernel, measured 4–5× slower here (2 AVX2 cores, torch
2.13). `torch.mkldnn_convolution` takes ordinary dense tensors and returns the same result
(max |Δ| ≈ 5e-5 on a whole network, tested).
"""

from __future__ import annotations

import types

import torch
from torch import nn


def _forward(self: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    if (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")):  # under bf16 autocast torch's conv3d runs oneDNN bf16
        return torch.mkldnn_convolution(x.contiguous(), self.weight, self.bias, self.padding, self.stride,
                                        self.dilation, self.groups)
    return nn.Conv3d.forward(self, x)


def use_onednn(model: nn.Module) -> int:
    """Patch every eligible Conv3d of `model` in place; returns how many were patched."""
    if not torch.backends.mkldnn.is_available():
        return 0
    n = 0
    for mod in model.modules():
        if type(mod) is nn.Conv3d and mod.padding_mode == "zeros" and not isinstance(mod.padding, str):
            mod.forward = types.MethodType(_forward, mod)  # type: ignore[method-assign]
            n += 1
    return n
