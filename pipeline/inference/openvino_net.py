"""OpenVINO as the CPU runtime of a stage's network (`predict.runtime`).

OpenVINO fuses conv + norm + activation and keeps a blocked memory layout from layer to layer
instead of reordering around every convolution. What that buys was measured, not assumed
(`bench/cpu_runtimes.py`, `bench/predict.py --runtime torch,openvino`, README "Prediction"): on
2 quiet cores the configured fine network's forward is about 3× faster than torch's (fp32 3.87 →
1.41 s, bf16 2.12 → 0.74 s), but the whole process only 10–20 %, because the network is no longer most of
it, at about twice torch's peak memory; the tiny demo networks are slower (a compile per stage
and process). So it is an opt-in, not the default: `auto` uses it only for weights packaged with its IR.

A network is converted for one input shape and one modality mask (the missing-modality
networks branch on the mask in Python, so a traced graph holds one mask): torch.export, then
`openvino.convert_model`; TorchScript tracing when torch.export refuses the model. Converting
costs seconds, so a weights folder can carry the converted networks for the shape every case
uses (`<stage>.openvino.xml/.bin`, hashed in the manifest like the safetensors, written by
`write_openvino`: `segpipe package --openvino`). Other shapes and masks are converted in the
process the first time they occur, and kept for the cases that follow. The IR is XML + raw
weights: nothing is unpickled.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.log import get_logger

log = get_logger(__name__)

SUFFIX = ".openvino"  # <stage>.openvino.xml / .bin in a weights folder


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class _WithMask(nn.Module):
    """The network with its modality mask fixed: one input, as the converted graph takes it."""

    def __init__(self, model: nn.Module, mask: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.mask = mask  # a plain attribute: a constant of the graph, not a buffer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.mask.expand(x.shape[0], -1))


def telemetry_off() -> None:
    """Decline OpenVINO's usage telemetry. `openvino.convert_model` otherwise reports to Google
    Analytics whenever no consent file exists in the home folder (and writes an id file there):
    a prediction sends nothing anywhere, and a container without network must not wait on it."""
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:  # openvino falls back to its own no-op stub
        return
    OptInChecker.check = lambda self, *args, **kwargs: ConsentCheckResult.DECLINED  # type: ignore[method-assign]


def convert(model: nn.Module, shape: Sequence[int], mask: np.ndarray) -> Any:
    """`model` as an openvino.Model for inputs [1, *shape] (C, Z, Y, X) with modality `mask`."""
    import openvino as ov

    telemetry_off()

    wrapped = _WithMask(model.eval(), torch.from_numpy(np.asarray(mask, bool))[None])
    example = torch.zeros((1, *(int(v) for v in shape)), dtype=torch.float32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the shapes and the mask are meant to be baked in
        try:
            return ov.convert_model(torch.export.export(wrapped, (example,), strict=False))
        except Exception as exc:  # torch.export refuses data-dependent Python; tracing bakes it in
            log.debug("torch.export failed (%s); converting through TorchScript tracing", exc)
            return ov.convert_model(wrapped, example_input=example)


def nominal_input(stage: str, info: dict[str, Any], preprocessing: dict[str, Any]) -> list[int] | None:
    """[C, Z, Y, X] of the windows a stage sees on every case, or None when that depends on the case
    (a grid from a spacing, smaller than the patch)."""
    from pipeline.inference.sliding_window import model_divisor, one_pass, padded_to

    model = info["model"]
    size = preprocessing.get("coarse_size" if stage == "coarse" else "fine_size")
    patch = info.get("patch_size")
    if size is None and not patch:
        return None
    if size is None or not one_pass(size, patch or size):
        window = [int(p) for p in patch]  # sliding windows of the patch
    else:
        window = padded_to(size, model_divisor(model))
    return [int(model.get("in_channels", 1)), *window]


def write_openvino(folder: str | Path) -> dict[str, list[int]]:
    """Convert each stage of the weights in `folder` for its nominal input with every modality
    present; add the IR files to the manifest (sha256). Returns stage → input shape."""
    from pipeline.errors import SegpipeError
    from pipeline.fsutil import atomic_write_text, sha256_file
    from pipeline.weights import MANIFEST, load_weights

    if not openvino_available():
        raise SegpipeError("OpenVINO IR needs the openvino package: pip install 'segpipe[openvino]'")
    import openvino as ov

    folder = Path(folder)
    weights = load_weights(folder, "cpu")
    manifest = weights.manifest
    written: dict[str, list[int]] = {}
    for name, sw in weights.stages.items():
        shape = nominal_input(name, sw.info, weights.preprocessing)
        if shape is None:
            log.info("%s: the %s stage's input size depends on the case; no OpenVINO IR written", folder, name)
            continue
        t = time.perf_counter()
        model = convert(sw.model, shape, np.ones(len(weights.modalities), bool))
        xml, binf = f"{name}{SUFFIX}.xml", f"{name}{SUFFIX}.bin"
        with tempfile.TemporaryDirectory(dir=folder) as tmp:  # both files appear complete or not at all
            # fp16 weights (the shipped demo weights) are stored as fp16 again: lossless, half the bytes
            ov.save_model(model, str(Path(tmp) / xml), compress_to_fp16=sw.info.get("dtype") == "float16")
            for f in (xml, binf):
                shutil.move(str(Path(tmp) / f), str(folder / f))
        for f in (xml, binf):
            manifest["files"][f] = {"sha256": sha256_file(folder / f), "bytes": (folder / f).stat().st_size}
        manifest["stages"][name]["openvino"] = {"xml": xml, "bin": binf, "input": shape,
                                                "mask": [True] * len(weights.modalities)}
        written[name] = shape
        log.info("%s: %s stage converted to OpenVINO for input %s in %.1f s", folder, name, shape,
                 time.perf_counter() - t)
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return written


class OpenVinoNet:
    """A stage's network run by OpenVINO: call it like the torch model, (x [B, C, ...], mask [B, M])
    → logits [B, K, ...]. Compiled networks are kept per (input shape, mask)."""

    def __init__(self, folder: Path, stage: str, model: nn.Module, info: dict[str, Any], *, bf16: bool,
                 threads: int, convert_missing: bool = True) -> None:
        import openvino as ov

        self.core = ov.Core()
        self.folder, self.stage, self.model, self.info = folder, stage, model, info
        self.convert_missing = convert_missing
        self.config = {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32", "INFERENCE_NUM_THREADS": int(threads),
                       "PERFORMANCE_HINT": "LATENCY"}
        self.compiled: dict[tuple, Any] = {}

    def has_ir(self, shape: tuple[int, ...], mask: tuple[bool, ...]) -> bool:
        ir = self.info.get("openvino")
        return bool(ir) and tuple(ir["input"]) == shape and tuple(ir["mask"]) == mask

    def _compile(self, shape: tuple[int, ...], mask: tuple[bool, ...]) -> Any:
        ir = self.info["openvino"] if self.has_ir(shape, mask) else None
        t = time.perf_counter()
        if ir is not None:
            model = self.core.read_model(str(self.folder / ir["xml"]), str(self.folder / ir["bin"]))
            how = "read"
        else:
            model = convert(self.model, shape, np.asarray(mask, bool))
            how = "converted"
        compiled = self.core.compile_model(model, "CPU", self.config)
        log.info("%s stage on OpenVINO (%s): input %s, modalities %s %s in %.1f s", self.stage,
                 self.config["INFERENCE_PRECISION_HINT"], list(shape), "".join("1" if m else "0" for m in mask), how,
                 time.perf_counter() - t)
        return compiled.create_infer_request()

    def __call__(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """Logits, or None when this window has no IR and converting is not wanted (the caller runs torch)."""
        keys = [(tuple(int(v) for v in x.shape[1:]), tuple(bool(v) for v in mask[i].tolist())) for i in range(len(x))]
        if not self.convert_missing and not all(k in self.compiled or self.has_ir(*k) for k in keys):
            return None
        rows = []
        for i, key in enumerate(keys):  # one window per request: the IR has batch 1
            request = self.compiled.get(key)
            if request is None:
                request = self.compiled[key] = self._compile(*key)
            out = request.infer({0: np.ascontiguousarray(x[i:i + 1].float().numpy())})[0]
            rows.append(torch.from_numpy(np.array(out, dtype=np.float32, copy=True)))
        return rows[0] if len(rows) == 1 else torch.cat(rows)
