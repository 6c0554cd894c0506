"""One case through the two stages: read → canonical → normalise → coarse → ROI → fine →
logits to the ROI grid (on the compute device) → argmax → postprocess → paste → write.

Preprocessing is the training code itself: `pipeline.case_images.read_case_images` (validation,
modality-grid agreement, canonical reorientation; prepare's load_case reads through it too), `data_prepare.process.normalise` (CT window
+ z-score in the body mask / MRI z-score in the brain mask, at full resolution) and
`pipeline.preprocess.resample_linear` for the coarse and fine grids, with the parameters stored
in the weights' manifest — so inference cannot drift from what the networks were trained on.

Memory/speed: only the normalised full-resolution image, the small coarse/fine tensors and one
z-chunk of upsampled logits exist at a time. Logits are resampled separably (z first at the
fine in-plane size, then bilinear in-plane per chunk of slices, which is exactly trilinear),
argmax'd on the device, and only a uint8 label map leaves it (nnU-Net's per-class CPU
resampling of full-size logits is its known bottleneck, MIC-DKFZ/nnUNet#2540).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import preprocess as pp
from pipeline.case_images import read_case_images
from pipeline.config import PredictSection, TaskSection
from pipeline.device import amp_dtype, autocast
from pipeline.errors import CaseError, SegpipeError
from pipeline.inference.modes import InferenceCase
from pipeline.inference.postprocess import plan_for, postprocess
from pipeline.inference.roi import RoiResult, roi_from_coarse
from pipeline.inference.sliding_window import model_divisor, predict_grid
from pipeline.log import get_logger
from pipeline.weights import LoadedWeights

log = get_logger("predict")


@dataclass
class CaseResult:
    labels: np.ndarray  # canonical (z, y, x) uint8, output label convention
    reorientation: Any  # pipeline.image_io.Reorientation
    info: dict[str, Any] = field(default_factory=dict)


def choose_runtime(setting: str, device: torch.device, weights: LoadedWeights) -> str:
    """`predict.runtime` → "torch", "openvino" or "openvino-ir".

    openvino: every network on OpenVINO, converted in the process where the weights carry no IR
    for a window shape or modality mask. auto ("openvino-ir"): OpenVINO on the CPU for the windows
    the weights carry IR for (`segpipe package --openvino`), torch for any other, so auto never
    waits on a conversion; torch when openvino is not installed or the weights carry no IR."""
    from pipeline.inference.openvino_net import openvino_available

    if setting == "torch":
        return "torch"
    if setting == "openvino":
        if device.type != "cpu":
            raise SegpipeError(f"predict.runtime=openvino runs on the CPU, not {device.type}; use --device cpu "
                               "or predict.runtime=torch")
        if not openvino_available():
            raise SegpipeError("predict.runtime=openvino: the openvino package is not installed "
                               "(pip install 'segpipe[openvino]', or predict.runtime=torch)")
        return "openvino"
    has_ir = any("openvino" in sw.info for sw in weights.stages.values())
    if device.type != "cpu" or not has_ir:
        return "torch"
    if not openvino_available():
        log.warning("%s carries OpenVINO IR, but the openvino package is not installed: torch runs the networks "
                    "(pip install 'segpipe[openvino]')", weights.path)
        return "torch"
    return "openvino-ir"


def _linear_taps(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lower/upper source index and upper weight of each output voxel (torch's align_corners=False)."""
    pos = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(0, n_in - 1)
    i0 = pos.floor().long()
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0.to(device), i1.to(device), (pos - i0).float().to(device)


Taps = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # lower index, upper index, upper weight [n, 1]


def _trilinear_points(planes: torch.Tensor, tz: Taps, ty: Taps, tx: Taps) -> torch.Tensor:
    """planes [Z, Y, X, K] interpolated at n points given by their taps per axis → [n, K]."""
    (za, zb, wz), (ya, yb, wy), (xa, xb, wx) = tz, ty, tx

    def along_x(zi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return torch.lerp(planes[zi, yi, xa], planes[zi, yi, xb], wx)

    return torch.lerp(torch.lerp(along_x(za, ya), along_x(za, yb), wy),
                      torch.lerp(along_x(zb, ya), along_x(zb, yb), wy), wz)


class Predictor:
    """Loaded weights + options; `predict(case)` → CaseResult. Reused across the cases of a run."""

    def __init__(self, weights: LoadedWeights, device: torch.device, settings: PredictSection | None = None) -> None:
        from pipeline.config import PrepareSection
        from pipeline.tasks import get_task

        self.weights = weights
        self.device = device
        self.settings = settings = settings or PredictSection()
        self.task = get_task(weights.task)
        self.prep = PrepareSection.model_validate(weights.preprocessing)
        self.post = plan_for(self.task.name, settings.postprocess, weights.manifest)
        self.amp_dtype = amp_dtype(device, settings.amp, inference=True)  # CPU: fp32 unless bf16 asked and native
        self.mirror_axes = tuple(int(a) for a in settings.mirror_axes) if settings.tta else ()
        # None: the task section's default, as a config without task.label_convention gets
        self.label_convention = settings.label_convention or TaskSection.model_fields["label_convention"].default
        self.runtime = choose_runtime(settings.runtime, device, weights)
        self.openvino: dict[str, Any] = {}
        if self.runtime != "torch":
            from pipeline.inference.openvino_net import OpenVinoNet

            self.openvino = {name: OpenVinoNet(weights.path, name, sw.model, sw.info,
                                               bf16=self.amp_dtype == torch.bfloat16, threads=torch.get_num_threads(),
                                               convert_missing=self.runtime == "openvino")
                             for name, sw in weights.stages.items()}
        if device.type == "cpu" and self.runtime != "openvino":  # the torch path (auto: beside the IR)
            from pipeline.inference.cpu_conv import use_onednn

            for sw in weights.stages.values():
                use_onednn(sw.model)

    # stages -------------------------------------------------------------------------------
    def _net(self, stage: str, x: np.ndarray, mask: np.ndarray, patch: Sequence[int]) -> torch.Tensor:
        sw = self.weights.stages[stage]
        xt = torch.from_numpy(x)[None].to(self.device)
        mt = torch.from_numpy(mask)[None].to(self.device)

        def forward(t: torch.Tensor) -> torch.Tensor:  # t: one or more windows [B, C, ...]
            if stage in self.openvino:
                out = self.openvino[stage](t, mt.expand(t.shape[0], -1))
                if out is not None:
                    return out
            with autocast(self.device, self.amp_dtype):
                return sw.model(t, mt.expand(t.shape[0], -1))

        window = self.settings.window if stage == "fine" else "auto"
        return predict_grid(forward, xt, int(sw.info["model"]["num_classes"]), patch,
                            divisor=model_divisor(sw.info["model"]), overlap=self.settings.overlap,
                            mirror_axes=self.mirror_axes, window=window, window_batch=self.settings.window_batch)

    def _patch(self, stage: str, grid: Sequence[int]) -> list[int]:
        patch = self.weights.stages[stage].info.get("patch_size")
        return [int(v) for v in (patch or grid)]

    def coarse(self, image: np.ndarray, mask: np.ndarray, shape: tuple[int, int, int],
               spacing: tuple[float, float, float]) -> tuple[np.ndarray, tuple[int, int, int]]:
        from data_prepare.process import coarse_grid

        grid = coarse_grid(shape, spacing, self.prep)
        x = pp.resample_linear(image, grid)
        logits = self._net("coarse", x, mask, self._patch("coarse", grid))
        return logits.argmax(0).to(torch.uint8).cpu().numpy(), grid

    def roi(self, image: np.ndarray, mask: np.ndarray, shape: tuple[int, int, int],
            spacing: tuple[float, float, float]) -> tuple[RoiResult, tuple[int, int, int]]:
        """The fine stage's ROI (coarse foreground box + margin) on the normalised image, and the coarse grid."""
        coarse_labels, cgrid = self.coarse(image, mask, shape, spacing)
        margin = self.settings.roi_margin_mm
        if margin is None:
            margin = self.weights.stages["fine"].info.get("roi_margin_mm") or self.prep.fine_margin_mm
        roi = roi_from_coarse(coarse_labels, shape, spacing, margin_mm=float(margin),
                              min_volume_mm3=self.settings.coarse_min_volume_mm3, z_window_mm=self.settings.z_window_mm)
        return roi, cgrid

    def fine_grid(self, box: pp.IntBox, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> list[int]:
        from data_prepare.process import fine_grid

        return [int(v) for v in fine_grid(box, shape, spacing, self.prep)["size"]]

    def upsample_argmax(self, logits: torch.Tensor, out_shape: Sequence[int]) -> np.ndarray:
        """argmax of the trilinearly (align_corners=False) upsampled logits on `out_shape`, uint8 on the CPU.

        Exact shortcut: where the 8 fine-grid nodes around a voxel share one argmax c, every convex
        combination keeps c on top, so such voxels take c by lookup. Only the voxels of the other
        cells (organ boundaries: a few per cent for a trained network) are interpolated: gathered
        8 corners × K classes each, when they are fewer than a quarter of a chunk; else the chunk is
        interpolated whole and separably (lerp along z, then y at the fine x size, then x, classes
        last so that the argmax runs over contiguous memory). Chunks are output slices holding at
        most `predict.upsample_chunk_floats` floats.
        """
        k, fz, fy, fx = logits.shape
        dev = logits.device
        (z0, z1, wz), (y0, y1, wy), (x0, x1, wx) = (
            _linear_taps(n_in, int(n_out), dev) for n_in, n_out in zip((fz, fy, fx), out_shape, strict=True))
        low = logits.argmax(0)
        padded = F.pad(low[None, None].float(), (0, 1, 0, 1, 0, 1), mode="replicate")
        uniform = (F.max_pool3d(padded, 2, 1) == -F.max_pool3d(-padded, 2, 1))[0, 0]  # cell (i..i+1)³ agrees
        low = low.to(torch.uint8)
        oz, oy, ox = (int(v) for v in out_shape)
        out = torch.empty((oz, oy, ox), dtype=torch.uint8, device=dev)
        planes = logits.permute(1, 2, 3, 0).float()  # [fz, fy, fx, K]
        wy_, wx_ = wy[None, :, None, None], wx[None, None, :, None]
        step = max(1, self.settings.upsample_chunk_floats // max(1, k * oy * ox))
        for a in range(0, oz, step):
            zs = slice(a, min(oz, a + step))
            cells = uniform[z0[zs]][:, y0][:, :, x0]
            mixed = (~cells).nonzero()  # [n, 3] local (z, y, x) of the voxels to interpolate
            n = int(mixed.shape[0])
            if 4 * n > cells.numel():  # mostly boundary: the separable pass is cheaper
                v = torch.lerp(planes[z0[zs]], planes[z1[zs]], wz[zs, None, None, None])  # [c, fy, fx, K]
                v = torch.lerp(v[:, y0], v[:, y1], wy_)  # [c, oy, fx, K]
                v = torch.lerp(v[:, :, x0], v[:, :, x1], wx_)  # [c, oy, ox, K]
                out[zs] = v.argmax(-1).to(torch.uint8)
                continue
            out[zs] = low[z0[zs]][:, y0][:, :, x0]
            if n == 0:
                continue
            iz, iy, ix = mixed[:, 0] + a, mixed[:, 1], mixed[:, 2]
            v = _trilinear_points(planes, (z0[iz], z1[iz], wz[iz, None]), (y0[iy], y1[iy], wy[iy, None]),
                                  (x0[ix], x1[ix], wx[ix, None]))
            out[iz, iy, ix] = v.argmax(-1).to(torch.uint8)
        return out.cpu().numpy()

    # the case ------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, case: InferenceCase) -> CaseResult:
        from data_prepare.process import normalise

        times: dict[str, float] = {}
        t = time.perf_counter()
        missing = [m for m in case.present if m not in self.task.modalities]
        if missing:
            raise CaseError(case.case_id, f"modalities {missing} are not inputs of the {self.weights.path.name} weights "
                                          f"({', '.join(self.task.modalities)})")
        images = {m: case.images.get(m) for m in self.task.modalities}
        loaded = read_case_images(case.case_id, images, self.prep.geometry_tolerance)
        reo = loaded.reorientation
        shape, spacing = loaded.shape, loaded.spacing_zyx
        image, body_box, _ = normalise(loaded, self.task, self.prep)
        loaded.channels = {}
        mask = np.array([images[m] is not None for m in self.task.modalities], dtype=bool)
        times["read"] = time.perf_counter() - t

        t = time.perf_counter()
        roi, cgrid = self.roi(image, mask, shape, spacing)
        box = roi.box
        if box is None:
            log.warning("case %s: the coarse stage found nothing; the fine stage runs on the %s box", case.case_id,
                        "body" if self.task.image_kind == "ct" else "brain")
            box = pp.expand_box_mm(body_box, 0.0, spacing, shape)
        times["coarse"] = time.perf_counter() - t

        t = time.perf_counter()
        fgrid = self.fine_grid(box, shape, spacing)
        region = tuple((float(lo), float(hi)) for lo, hi in box)
        x = pp.resample_linear(image, fgrid, region)  # type: ignore[arg-type]
        del image
        logits = self._net("fine", x, mask, self._patch("fine", fgrid))
        roi_shape = [box[a][1] - box[a][0] for a in range(3)]
        roi_labels = self.upsample_argmax(logits, roi_shape)
        del logits
        times["fine"] = time.perf_counter() - t

        t = time.perf_counter()
        postprocess(roi_labels, self.post, spacing)
        labels = np.zeros(shape, np.uint8)
        labels[tuple(slice(lo, hi) for lo, hi in box)] = roi_labels
        if self.task.name == "brats" and self.label_convention == "legacy":
            from pipeline.tasks import BRATS_2023_TO_LEGACY

            lut = np.zeros(256, np.uint8)
            for internal, raw in BRATS_2023_TO_LEGACY.items():
                lut[internal] = raw
            labels = lut[labels]
        times["post"] = time.perf_counter() - t
        info = {"coarse_grid": list(cgrid), "fine_grid": fgrid, "roi_box": [list(b) for b in box],
                "roi_found": roi.found, "seconds": {k: round(v, 3) for k, v in times.items()},
                "roi_fraction": round(math.prod(roi_shape) / math.prod(shape), 3)}
        return CaseResult(labels, reo, info)
