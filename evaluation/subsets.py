"""The missing-modality papers' evaluation: one model, every non-empty subset of the BraTS
modalities, Dice and HD95 per region (ET/TC/WT) per subset and the mean over subsets.

    segpipe evaluate brats --subsets all --data DIR --weights W [--json F] [--markdown F] [--csv F]

A case enters a subset's row only if it has every modality of the subset (on complete test
data: every case in every row), and is run with exactly those modalities: through the full
inference pipeline (`pipeline.inference`, files of the other modalities left out, as BraSyn
does) for the CLI, or through any `predict(image, mask)` callable (benchmarks, tests).
Per case and region the scores are `evaluation.brats.case_labels`' (2023: full-volume Dice and
DeepMind HD95 with 374 for an empty side; legacy: CaPTk-style, 373.13).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.brats import REGION_ORDER, case_labels
from evaluation.surface import dice, label_mask
from fine_seg.missing.subsets import all_subsets, subset_mask, subset_name
from pipeline.fsutil import atomic_write_text
from pipeline.log import get_logger
from pipeline.tasks import BRATS_MODALITIES

log = get_logger("evaluate.subsets")

# predict(case, mask) → label map in the evaluation's convention, same grid as case.label
Predict = Callable[["SubsetCase", np.ndarray], np.ndarray]


@dataclass
class SubsetCase:
    case_id: str
    label: np.ndarray  # ground truth (z, y, x)
    spacing: tuple[float, float, float]  # (z, y, x) mm
    available: np.ndarray  # bool [N]: modalities the case has
    data: Any = None  # whatever `predict` needs (an image array, an InferenceCase, ...)


def evaluate_subsets(predict: Predict, cases: Iterable[SubsetCase], subsets: Sequence[tuple[int, ...]] | None = None,
                     *, convention: str = "2023", names: Sequence[str] = BRATS_MODALITIES,
                     hd95: bool = True) -> dict[str, Any]:
    """Scores every case under every subset it can present; one failing case/subset is logged and
    recorded, never fatal. `hd95=False` skips the surface distances (Dice only, much faster)."""
    subsets = list(subsets or all_subsets(len(names)))
    rows: dict[str, dict[str, Any]] = {subset_name(s, names): {"modalities": [names[i] for i in s], "cases": {}}
                                       for s in subsets}
    failed: list[dict[str, str]] = []
    for case in cases:
        for s in subsets:
            if not all(bool(case.available[i]) for i in s):
                continue
            name = subset_name(s, names)
            try:
                pred = predict(case, subset_mask(s, len(names)))
                if pred.shape != case.label.shape:
                    raise ValueError(f"prediction shape {pred.shape} differs from the label's {case.label.shape}")
                scores = case_labels(case.label, pred, case.spacing, convention, None) if hd95 else \
                    _dice_only(case.label, pred, convention)
            except Exception as exc:  # one bad case never stops the others
                reason = f"{exc.__class__.__name__}: {' '.join(str(exc).split())[:200]}"
                log.error("case %s, subset %s: %s", case.case_id, name, reason)
                failed.append({"case": case.case_id, "subset": name, "reason": reason})
                continue
            rows[name]["cases"][case.case_id] = {r: {"dice": v["dice"], "hd95": v.get("hd95")} for r, v in scores.items()}
    mean = summarise(rows)
    return {"task": "brats-subsets", "convention": convention, "regions": list(REGION_ORDER),
            "modalities": list(names), "subsets": rows, "mean_over_subsets": mean,
            "subsets_without_cases": [n for n, r in rows.items() if not r["n_cases"]], "failed": failed}


def summarise(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Fill each subset row's `n_cases` and `mean` from its `cases`; return the mean over the
    subsets that have cases, per region and metric (the papers' bottom line)."""
    for row in rows.values():
        row["n_cases"] = len(row["cases"])
        row["mean"] = _mean(list(row["cases"].values()))
    scored = [r["mean"] for r in rows.values() if r["n_cases"]]
    return {reg: {m: _nanmean([r[reg][m] for r in scored]) for m in ("dice", "hd95")} for reg in REGION_ORDER}


def _dice_only(gt: np.ndarray, pred: np.ndarray, convention: str) -> dict[str, dict[str, Any]]:
    from evaluation.brats import REGIONS

    regions = REGIONS[convention]
    return {reg: {"dice": dice(label_mask(gt, regions[reg]), label_mask(pred, regions[reg]), empty=1.0), "hd95": None}
            for reg in REGION_ORDER}


def _nanmean(values: list[Any]) -> float | None:
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    return float(np.mean(v)) if v else None


def _mean(cases: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    return {reg: {m: _nanmean([c[reg][m] for c in cases]) for m in ("dice", "hd95")} for reg in REGION_ORDER}


# -- outputs -------------------------------------------------------------------------------------
def _f(v: Any, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown_table(results: dict[str, Any]) -> str:
    """The papers' table: one row per subset (✓ per modality), Dice and HD95 per region, the mean row."""
    names = results["modalities"]
    regs = results["regions"]
    head = [*names, "n", *(f"Dice {r}" for r in regs), *(f"HD95 {r}" for r in regs)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":-:"] * len(names) + ["-:"] * (1 + 2 * len(regs))) + "|"]
    for row in results["subsets"].values():
        ticks = ["✓" if n in row["modalities"] else "" for n in names]
        m = row["mean"]
        lines.append("| " + " | ".join([*ticks, str(row["n_cases"]), *(_f(m[r]["dice"], 4) for r in regs),
                                          *(_f(m[r]["hd95"], 2) for r in regs)]) + " |")
    mean = results["mean_over_subsets"]
    lines.append("| " + " | ".join(["**mean**", *[""] * (len(names) - 1), "", *(f"**{_f(mean[r]['dice'], 4)}**" for r in regs),
                                      *(f"**{_f(mean[r]['hd95'], 2)}**" for r in regs)]) + " |")
    return "\n".join(lines) + "\n"


def csv_text(results: dict[str, Any]) -> str:
    """One row per (subset, case) plus one `mean` row per subset and the overall mean."""
    regs = results["regions"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["subset", "case", *(f"{r}_{m}" for r in regs for m in ("dice", "hd95"))])
    for name, row in results["subsets"].items():
        for cid, sc in sorted(row["cases"].items()):
            w.writerow([name, cid, *(_f(sc[r][m], 6) for r in regs for m in ("dice", "hd95"))])
        w.writerow([name, "mean", *(_f(row["mean"][r][m], 6) for r in regs for m in ("dice", "hd95"))])
    mean = results["mean_over_subsets"]
    w.writerow(["all", "mean_over_subsets", *(_f(mean[r][m], 6) for r in regs for m in ("dice", "hd95"))])
    return buf.getvalue()


def write_outputs(results: dict[str, Any], *, json_path: str | Path | None = None,
                  markdown_path: str | Path | None = None, csv_path: str | Path | None = None) -> None:
    if json_path:
        atomic_write_text(json_path, json.dumps(results, indent=1, allow_nan=False) + "\n")
    if markdown_path:
        atomic_write_text(markdown_path, markdown_table(results))
    if csv_path:
        atomic_write_text(csv_path, csv_text(results))


# -- the full inference pipeline on a BraTS folder --------------------------------------------------
def pipeline_cases(data: str | Path) -> list[SubsetCase]:
    """Labeled cases of a BraTS-layout folder; `data` of each is its InferenceCase-ready image dict."""
    import SimpleITK as sitk

    from data_prepare.layouts import discover
    from pipeline.errors import SegpipeError
    from pipeline.image_io import read_image

    disc = discover(data, "brats", "brats")
    for cid, reason in disc.problems:
        log.error("case %s: %s (skipped)", cid, reason)
    out = []
    for src in disc.cases:
        if src.label is None:
            continue
        try:
            image = read_image(src.label)
        except SegpipeError as exc:
            log.error("%s (skipped)", exc)
            continue
        spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
        avail = np.array([src.images.get(m) is not None for m in BRATS_MODALITIES], bool)
        out.append(SubsetCase(src.case_id, sitk.GetArrayFromImage(image), spacing, avail, dict(src.images)))  # type: ignore[arg-type]
    return out


def pipeline_predictor(weights: str | Path | None, *, device: str = "auto", convention: str = "2023",
                       options: Any = None) -> Predict:
    """predict(case, mask) through `pipeline.inference` with the files of unselected modalities dropped."""
    import tempfile

    from pipeline.config import PredictSection
    from pipeline.device import pick_device
    from pipeline.inference.engine import Predictor
    from pipeline.inference.modes import InferenceCase
    from pipeline.weights import default_weights_root, find_weights, load_weights

    dev = pick_device(device)
    loaded = load_weights(find_weights(weights if weights is not None else default_weights_root(), "brats"), dev)
    opts = options or PredictSection(label_convention=convention)
    predictor = Predictor(loaded, dev, opts)
    scratch = Path(tempfile.gettempdir()) / "segpipe-subsets"

    def predict(case: SubsetCase, mask: np.ndarray) -> np.ndarray:
        images = {m: (case.data.get(m) if mask[i] else None) for i, m in enumerate(BRATS_MODALITIES)}
        res = predictor.predict(InferenceCase(case.case_id, images, scratch / f"{case.case_id}.nii.gz"))
        return np.asarray(res.reorientation.array_to_original(res.labels))

    return predict
