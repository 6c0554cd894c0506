"""Multi-encoder fine network for missing modalities (ShaSpec / LCKD / PASSION / HGA).

Each modality goes through one *shared* encoder on its own (N folded into the batch, run only
for the (sample, modality) pairs that are present), optionally plus a *specific* encoder per
modality (ShaSpec). At every encoder level the N per-modality features are concatenated and
merged by a 1×1×1 conv; a missing modality's slot is filled with the mean of the available
shared features (LCKD's rule; the ShaSpec seed copied the first available one). At the
bottleneck ShaSpec composes `f = f_sh + conv3([f_sh ‖ f_spec])`. The context block, decoder and
heads are those of `EfficientSegNet`, so exported weights load through `fine_seg.build_model`.

`forward(x, mask)` returns logits like EfficientSegNet; `forward(x, mask, aux=True)` returns a
dict with what the auxiliary losses need (see `MultiEncoderNet.forward`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fine_seg.model import EfficientSegNet, default_model_config
from pipeline.nn import ConvNormAct, ResBlock, encoder_stages, init_weights, resolve_strides

EXTRA_DEFAULTS: dict[str, Any] = {
    "method": "shaspec",
    "specific_encoders": None,  # None → True for shaspec only
    "specific_channels": None,  # None → the shared encoder's channels
}


def split_config(cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    extra = {k: cfg.get(k, v) for k, v in EXTRA_DEFAULTS.items()}
    base = {k: v for k, v in cfg.items() if k not in EXTRA_DEFAULTS}
    return default_model_config(**base), extra


def make_encoder(cin: int, channels: list[int], strides: list[Any], blocks: int, kw: dict[str, Any]) -> nn.ModuleList:
    stem = nn.Sequential(ConvNormAct(cin, channels[0], 3, **kw), ResBlock(channels[0], channels[0], **kw))
    return nn.ModuleList([stem, *encoder_stages(channels, strides, blocks, **kw)])


def substitute_missing(f: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """f [B,N,C,...] with zeros at missing slots → missing slots replaced by the mean of the present ones."""
    m = mask.to(f.dtype).view(*mask.shape, *([1] * (f.ndim - 2)))
    mean = (f * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)
    return f * m + mean * (1 - m)


class MultiEncoderNet(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        base, extra = split_config(cfg)
        self.cfg = {**base, **extra}
        self.method = str(extra["method"])
        n = int(base["in_channels"])
        c = [int(v) for v in base["channels"]]
        self.num_modalities = n
        # the shared encoder, context block, decoder and heads: one single-channel EfficientSegNet
        self.backbone = EfficientSegNet({**base, "in_channels": 1, "mask_channels": False})
        kw = {"norm": base["norm"], "act": base["act"]}
        self.merge = nn.ModuleList(ConvNormAct(n * ci, ci, 1, **kw) for ci in c)
        specific = extra["specific_encoders"]
        self.has_specific = bool(self.method == "shaspec" if specific is None else specific)
        if self.has_specific:
            sc = [int(v) for v in (extra["specific_channels"] or c)]
            if len(sc) != len(c):
                raise ValueError(f"fine model: specific_channels needs {len(c)} levels, got {len(sc)}")
            strides = resolve_strides(base["strides"], len(c), "fine")
            self.specific = nn.ModuleList(make_encoder(1, sc, strides, max(1, int(base["blocks"])), kw) for _ in range(n))
            self.spec_proj = nn.ModuleList(nn.Conv3d(sc[-1], c[-1], 1) for _ in range(n))
            self.compose = ConvNormAct(2 * c[-1], c[-1], 3, **{**kw, "act": None})
            # modality classifier on globally pooled specific features: no norm on pooled tensors
            self.classifier = nn.Linear(c[-1], n)
        init_weights(self)

    # -- parts ----------------------------------------------------------------------------------
    def _per_modality(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Shared-encoder features per level as [B,N,C,...] (zeros where missing), run on present pairs only."""
        b, n = x.shape[:2]
        idx = torch.nonzero(mask.reshape(-1), as_tuple=False).flatten()
        xs = x.reshape(b * n, 1, *x.shape[2:])[idx]
        feats = self.backbone.encode(xs)
        out = []
        for f in feats:
            full = f.new_zeros((b * n, *f.shape[1:]))
            full[idx] = f
            out.append(full.view(b, n, *f.shape[1:]))
        return out, idx

    def _specific(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Bottleneck specific features [B,N,C,...] (zeros where missing)."""
        out = None
        unused = []
        for m, (enc, proj) in enumerate(zip(self.specific, self.spec_proj, strict=True)):
            rows = torch.nonzero(mask[:, m], as_tuple=False).flatten()
            if rows.numel() == 0:
                unused += [*enc.parameters(), *proj.parameters()]
                continue
            h = x[rows, m:m + 1]
            for stage in enc:
                h = stage(h)
            h = proj(h)
            if out is None:
                out = h.new_zeros((x.shape[0], self.num_modalities, *h.shape[1:]))
            out[rows, m] = h
        assert out is not None
        if unused and self.training and torch.is_grad_enabled():
            # keep every parameter in the graph: DDP (find_unused_parameters=False) requires it
            out = out + 0.0 * sum(p.sum() for p in unused)
        return out

    def forward(self, x: torch.Tensor, modality_mask: torch.Tensor | None = None, aux: bool = False) -> Any:
        """aux=False: logits (a deep-supervision list in training mode). aux=True: dict with
        `logits`, `features` (full-resolution decoder features), `shared` (bottleneck shared
        features [B,N,C,Z,Y,X], zeros where missing), `mask`, and for ShaSpec `modality_logits`
        [B,N,N] (modality classifier on pooled specific features)."""
        if x.shape[1] != self.num_modalities:
            raise ValueError(f"fine model expects {self.num_modalities} modality channels, got {x.shape[1]}")
        if modality_mask is None:
            modality_mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        mask = modality_mask.to(x.device).bool()
        if not bool(mask.any(1).all()):
            raise ValueError("every sample needs at least one available modality")
        x = x * mask.to(x.dtype)[:, :, None, None, None]
        shared, _ = self._per_modality(x, mask)
        levels = list(shared)
        result: dict[str, Any] = {"shared": shared[-1], "mask": mask}
        if self.has_specific:
            spec = self._specific(x, mask)
            sh = shared[-1]
            b, n = sh.shape[:2]
            composed = sh + self.compose(torch.cat([sh, spec], 2).flatten(0, 1)).view_as(sh)
            levels[-1] = composed * mask.to(sh.dtype).view(b, n, *([1] * (sh.ndim - 2)))
            pooled = F.adaptive_avg_pool3d(spec.flatten(0, 1), 1).flatten(1)  # [B·N, C], never normalised
            result["modality_logits"] = self.classifier(pooled).view(b, n, n)
            # a missing slot gets the mean of the available *shared* features
            mean = substitute_missing(sh, mask)
            levels[-1] = torch.where(mask.view(b, n, *([1] * (sh.ndim - 2))), levels[-1], mean)
        fused = []
        for f, merge, lvl in zip(levels, self.merge, range(len(levels)), strict=True):
            g = f if (self.has_specific and lvl == len(levels) - 1) else substitute_missing(f, mask)
            fused.append(merge(g.flatten(1, 2)))
        fused[-1] = self.backbone.context(fused[-1])
        logits, features = self.backbone.decode_with_features(fused)
        if not aux:
            return logits
        result.update(logits=logits, features=features)
        return result


def build_model(cfg: dict[str, Any]) -> MultiEncoderNet:
    return MultiEncoderNet(cfg)
