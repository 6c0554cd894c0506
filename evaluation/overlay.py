"""The overlay figure of one evaluated case: image | ground truth | prediction, on the axial slice
(and the coronal one) through the largest cross-section of the foreground, in segpipe's
canonical orientation (pipeline.image_io: rows anterior → posterior, patient's left on the
right of the screen, superior up), labels filled with one fixed colour legend per task.

The evaluation report puts the median case's figure next to its summary table and saves it with
`overlay.json` (file name and caption) beside report.html; the demo page reads that back
(`load_overlay`) to show each task's figure next to its headline table.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.tasks import FLARE22_LABELS

OVERLAY_INDEX = "overlay.json"
CT_WINDOW = (-160.0, 240.0)  # abdominal soft-tissue window (level 40, width 400 HU)
ALPHA = 0.55
WIDTH_IN, DPI = 5.0, 80  # 400 px wide: the pages show it at about this size, so the text stays legible
LEGEND_COLUMNS = 4

FLARE_COLOURS = {
    1: "#d62728", 2: "#ff7f0e", 3: "#9467bd", 4: "#f5d327", 5: "#e377c2", 6: "#17becf", 7: "#bcbd22",
    8: "#8c564b", 9: "#2ca02c", 10: "#f7b6d2", 11: "#1f77b4", 12: "#98df8a", 13: "#aec7e8",
}
# BraTS by meaning, whatever value a convention gives it: core red, edema green, enhancing yellow
BRATS_NAMES = {
    "brats-2023": {1: "NETC necrotic core", 2: "SNFH edema", 3: "ET enhancing"},
    "brats-legacy": {1: "NCR necrotic core", 2: "ED edema", 4: "ET enhancing"},
    "brats-2025": {1: "NETC necrotic core", 2: "SNFH edema", 3: "ET enhancing", 4: "RC resection cavity"},
}
BRATS_COLOURS = {"necrotic": "#e41a1c", "edema": "#4daf4a", "enhancing": "#ffd92f", "cavity": "#377eb8"}
BRATS_REGIONS_NOTE = "regions: ET = enhancing, TC = ET + necrotic core, WT = TC + edema"


# the pages' first screen: a table (or any block) with the figures beside it, wrapping when narrow
FIRST_SCREEN_CSS = (".top{display:flex;flex-wrap:wrap;gap:8px 24px;align-items:flex-start}"
                    "figure.overlay{flex:1 1 300px;max-width:480px;margin:8px 0}figure.overlay img{width:100%;margin:0}"
                    "figcaption{color:#5b6475;font-size:.78em}")


@dataclass(frozen=True)
class Overlay:
    case: str
    png: bytes
    caption: str

    def html(self, prefix: str = "") -> str:
        """A self-contained <figure> (the PNG inline as a data URI), `prefix` before the caption."""
        data = base64.b64encode(self.png).decode()
        return (f'<figure class=overlay><img alt="overlay of case {html.escape(self.case)}" '
                f'src="data:image/png;base64,{data}"><figcaption>{html.escape(prefix + self.caption)}</figcaption>'
                "</figure>")


def legend(task: str) -> dict[int, tuple[str, str]]:
    """Label value → (name, colour) for a results document's task (flare, brats-2023, ...)."""
    if task == "flare":
        return {k: (name.replace("_", " "), FLARE_COLOURS[k]) for k, name in FLARE22_LABELS.items()}
    names = BRATS_NAMES.get(task, BRATS_NAMES["brats-2023"])
    return {k: (name, next(c for key, c in BRATS_COLOURS.items() if key in name)) for k, name in names.items()}


def median_case(results: dict[str, Any]) -> tuple[dict[str, Any], int, int, float] | None:
    """The scored case with the median mean primary metric (Dice/DSC over its labels; the lower
    median for an even count, ties by case id): (case, 1-based rank, cases, value), or None."""
    metric = results["metrics"][0]
    scored = []
    for case in results["cases"]:
        values = [e[metric] for e in case["labels"].values() if e.get(metric) is not None]
        if case["status"] == "ok" and values:
            scored.append((float(np.mean(values)), case["case"], case))
    if not scored:
        return None
    scored.sort(key=lambda s: (s[0], s[1]))
    i = (len(scored) - 1) // 2
    return scored[i][2], i + 1, len(scored), scored[i][0]


def metric_name(metric: str) -> str:
    """How captions write a metric: DSC, Dice, NSD, HD95."""
    return {"dice": "Dice", "lesionwise_dice": "lesion-wise Dice"}.get(metric, metric.upper())


def find_case_image(image_dir: Path | None, case: str) -> Path | None:
    """The image under a case: `<case>_0000.*` (FLARE, nnU-Net), else the first of t1ce, flair,
    t2, t1 in a BraTS case folder `<case>/`."""
    from pipeline.brats_files import brats_tag, image_files
    from pipeline.image_io import image_suffix

    if image_dir is None or not image_dir.is_dir():
        return None
    flat = sorted(p for p in image_dir.glob(f"{case}_0000.*") if image_suffix(p))
    if flat:
        return flat[0]
    folder = image_dir / case
    if Path(case).name != case or not folder.is_dir():
        return None
    by_modality = {tag[1]: p for p in image_files(folder) if (tag := brats_tag(p)) is not None}
    return next((by_modality[m] for m in ("t1ce", "flair", "t2", "t1") if m in by_modality), None)


def _canonical(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The project's reading: validated, reoriented to canonical (z, y, x); spacing (z, y, x)."""
    from pipeline.image_io import read_image, to_canonical

    array, reo = to_canonical(read_image(path))
    sp = reo.canonical.spacing
    return np.asarray(array), (sp[2], sp[1], sp[0])


def largest_sections(mask: np.ndarray) -> tuple[int, int]:
    """Axial and coronal index of the largest cross-section of `mask` (centre when empty)."""
    if not mask.any():
        return mask.shape[0] // 2, mask.shape[1] // 2
    return int(np.argmax(mask.sum(axis=(1, 2)))), int(np.argmax(mask.sum(axis=(0, 2))))


def _rgba(labels: np.ndarray, colours: dict[int, tuple[str, str]]) -> np.ndarray:
    from matplotlib.colors import to_rgba

    lut = np.zeros((max(int(labels.max(initial=0)), max(colours, default=0)) + 1, 4))
    lut[1:] = (1.0, 1.0, 1.0, ALPHA)  # a value outside the legend still shows, in white
    for value, (_, colour) in colours.items():
        lut[value] = (*to_rgba(colour)[:3], ALPHA)
    return lut[labels]


def _window(image: np.ndarray, task: str) -> tuple[float, float]:
    if task == "flare":
        return CT_WINDOW
    inside = image[image > 0]
    lo, hi = np.percentile(inside, [1, 99]) if inside.size else (0.0, 1.0)
    return float(lo), float(max(hi, lo + 1e-6))


def render(case: str, gt_path: Path, pred_path: Path | None, image_path: Path | None, task: str, *,
           focus_label: int | None = None, caption: str = "") -> Overlay:
    """The figure (PNG, < 150 KB) of one case; see the module docstring."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    gt, spacing = _canonical(gt_path)
    pred = _canonical(pred_path)[0] if pred_path is not None and pred_path.is_file() else None
    pred = pred if pred is not None and pred.shape == gt.shape else np.zeros_like(gt)
    image = _canonical(image_path)[0].astype(np.float32) if image_path is not None else None
    image = image if image is not None and image.shape == gt.shape else None
    focus = gt == focus_label if focus_label is not None and np.any(gt == focus_label) else gt > 0
    z, y = largest_sections(focus if focus.any() else pred > 0)
    colours = legend(task)
    sz, sy, sx = spacing
    views = [("axial", np.s_[z, :, :], sy / sx, "upper", z), ("coronal", np.s_[:, y, :], sz / sx, "lower", y)]
    panels = (["image"] if image is not None else []) + ["ground truth", "prediction"]
    heights = [gt[s].shape[0] * aspect / gt[s].shape[1] for _, s, aspect, _, _ in views]
    legend_h = 0.16 * math.ceil(len(colours) / LEGEND_COLUMNS) + 0.05
    panel_w = WIDTH_IN / len(panels)
    fig, axes = plt.subplots(len(views), len(panels), squeeze=False, gridspec_kw={"height_ratios": heights},
                             figsize=(WIDTH_IN, panel_w * sum(heights) + 0.35 + legend_h))
    lo, hi = _window(image, task) if image is not None else (0.0, 1.0)
    for row, (view, s, aspect, origin, index) in enumerate(views):
        back = image[s] if image is not None else np.zeros(gt[s].shape, np.float32)
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(back, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, origin=origin, interpolation="nearest")
            if panel != "image":
                ax.imshow(_rgba((gt if panel == "ground truth" else pred)[s], colours), aspect=aspect, origin=origin,
                          interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(panel if row == 0 else "", fontsize=8)
        axes[row, 0].set_ylabel(f"{view} {index}", fontsize=7)
    handles = [Patch(facecolor=c, label=name) for name, c in colours.values()]
    fig.legend(handles=handles, loc="lower center", ncol=min(LEGEND_COLUMNS, len(handles)), fontsize=7, frameon=False,
               handlelength=1.0, columnspacing=0.8)
    fig.subplots_adjust(left=0.04, right=0.99, top=1 - 0.25 / fig.get_figheight(), wspace=0.03, hspace=0.03,
                        bottom=(0.05 + legend_h) / fig.get_figheight())
    return Overlay(case, _png(fig), caption)


def _png(fig: Any) -> bytes:
    """The figure as a 256-colour palette PNG (octree keeps the legend's colours exact): a
    quarter of the RGBA bytes, so a page can inline one per task."""
    import matplotlib.pyplot as plt
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    palette = Image.open(io.BytesIO(buf.getvalue())).convert("RGB").quantize(
        colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    out = io.BytesIO()
    palette.save(out, format="png", optimize=True)
    return out.getvalue()


def median_overlay(results: dict[str, Any], pairs: dict[str, Any], image_dir: Path | None) -> Overlay | None:
    """The figure of the median case of `results` (`pairs`: case → matched pred/gt files)."""
    picked = median_case(results)
    if picked is None or picked[0]["case"] not in pairs:
        return None
    case, rank, n, value = picked
    metric = metric_name(results["metrics"][0])
    pair = pairs[case["case"]]
    note = f"; {BRATS_REGIONS_NOTE}" if results["task"].startswith("brats") else ""
    caption = (f"Median case by mean {metric}: {case['case']} ({metric} {value:.3f}, {rank} of {n} scored cases). "
               f"Image, ground truth, prediction; axial and coronal slices through the largest cross-section of "
               f"the ground truth{note}.")
    return render(case["case"], pair.gt, pair.pred, find_case_image(image_dir, case["case"]), results["task"],
                  caption=caption)


def save_overlay(overlay: Overlay, folder: Path, name: str) -> None:
    """`folder/name` (the PNG) and `folder/overlay.json` (its name, case and caption)."""
    from pipeline.fsutil import atomic_write_bytes, atomic_write_text

    atomic_write_bytes(folder / name, overlay.png)
    atomic_write_text(folder / OVERLAY_INDEX, json.dumps({"png": name, "case": overlay.case,
                                                          "caption": overlay.caption}, indent=1) + "\n")


def load_overlay(folder: Path) -> Overlay | None:
    """What `save_overlay` wrote in `folder`, or None when it wrote nothing (or it is unreadable)."""
    try:
        index = json.loads((folder / OVERLAY_INDEX).read_text())
        name = str(index["png"])
        if Path(name).name != name:
            return None
        return Overlay(str(index["case"]), (folder / name).read_bytes(), str(index["caption"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
