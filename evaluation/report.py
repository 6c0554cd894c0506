"""A report people read: one self-contained HTML page (PNGs inlined as base64, no external
assets, opens offline) plus the same PNGs as files.

Sections, each present when its data is: summary of the means; per-label box plots; the
per-case table sorted by the worst label; contour overlays (ground truth solid, prediction
dashed) on axial and coronal slices for the worst and the median case; the efficiency table
and timeline (GPU memory and CPU over time).
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.results import higher_is_better, worst_value
from pipeline.fsutil import atomic_write_bytes, atomic_write_text
from pipeline.log import get_logger

log = get_logger("evaluate.report")

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#1d2330;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px}h2{font-size:1.25em;margin-top:32px;border-bottom:1px solid #d6dbe4;padding-bottom:4px}
.meta{color:#5b6475;font-size:.92em}
table{border-collapse:collapse;font-size:.85em;margin:8px 0}
th,td{border:1px solid #d6dbe4;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#eef1f6;position:sticky;top:0}td.name,th.name{text-align:left}
.scroll{max-height:520px;overflow:auto;border:1px solid #d6dbe4;display:inline-block;max-width:100%}
.scroll table{margin:0}
img{max-width:100%;border:1px solid #e3e7ee;margin:6px 0}
.warn{color:#9a3412}.ok{color:#166534}
"""


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _img_tag(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return f"{v:.{digits}f}"


def _shade(value: Any, metric: str) -> str:
    """Background colour for a score cell: red (bad) → green (good) for [0, 1] metrics."""
    if value is None or not higher_is_better(metric) or not isinstance(value, int | float):
        return ""
    v = min(1.0, max(0.0, float(value)))
    r, g = int(255 - 120 * v), int(170 + 70 * v)
    return f' style="background:rgb({r},{g},{170 if v > 0.5 else 150})"'


# --------------------------------------------------------------------------------------
# accuracy figures
# --------------------------------------------------------------------------------------
def boxplot_png(results: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = results["metrics"][:2] if results["task"] == "flare" else results["metrics"]
    names = list(results["mean"])
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6.0, 0.75 * len(names) + 2), 3.0 * len(metrics)), squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        data = [[c["labels"][n][metric] for c in results["cases"] if c["labels"].get(n, {}).get(metric) is not None] for n in names]
        ax.boxplot(data, showmeans=True, meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black", "markersize": 4})
        ax.set_xticks(range(1, len(names) + 1), [n.replace("_", "\n") for n in names], fontsize=7)
        ax.set_ylabel(metric.upper())
        if higher_is_better(metric):
            ax.set_ylim(-0.03, 1.03)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_title(f"{results['task']}: per-label distribution over {len(results['cases'])} case(s) (◇ = mean)")
    fig.tight_layout()
    return _png(fig)


def _primary_metric(results: dict[str, Any]) -> str:
    return results["metrics"][0]


def ranked_cases(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Cases sorted worst first by their worst label on the primary metric."""
    metric = _primary_metric(results)
    better = higher_is_better(metric)

    def key(c: dict[str, Any]) -> float:
        v = worst_value(c, metric, better)
        v = (-math.inf if better else math.inf) if math.isnan(v) else v
        return v if better else -v

    return sorted(results["cases"], key=key)


def _load_canonical(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    from pipeline.image_io import read_image, to_canonical

    image = read_image(path)
    array, reo = to_canonical(image)
    array = np.array(array, copy=True)  # to_canonical may return a view into `image`'s buffer
    spacing = reo.canonical.spacing  # (x, y, z)
    return array, (spacing[2], spacing[1], spacing[0])


def overlay_png(case: str, gt_path: Path, pred_path: Path | None, image_path: Path | None, label_names: dict[int, str],
                focus_label: int | None) -> bytes:
    """Axial and coronal slices through the focus label's GT centre, GT solid, prediction dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    gt, spacing = _load_canonical(gt_path)
    pred = _load_canonical(pred_path)[0] if pred_path is not None else np.zeros_like(gt)
    if pred.shape != gt.shape:
        pred = np.zeros_like(gt)
    background = None
    if image_path is not None and image_path.is_file():
        img = _load_canonical(image_path)[0]
        if img.shape == gt.shape:
            background = img.astype(np.float32)
    mask = gt == focus_label if focus_label is not None and np.any(gt == focus_label) else gt > 0
    if not mask.any():
        mask = pred > 0
    centre = [round(float(np.mean(idx))) for idx in np.nonzero(mask)] if mask.any() else [s // 2 for s in gt.shape]
    z, y, _ = centre
    cmap = plt.get_cmap("tab20")
    present = sorted(set(np.unique(gt).tolist()) | set(np.unique(pred).tolist()) - {0})
    present = [v for v in present if v != 0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2))
    views = [
        ("axial", (slice(z, z + 1), slice(None), slice(None)), spacing[1] / spacing[2], "upper"),
        ("coronal", (slice(None), slice(y, y + 1), slice(None)), spacing[0] / spacing[2], "lower"),
    ]
    for ax, (title, sl, aspect, origin) in zip(axes, views, strict=True):
        g2, p2 = np.squeeze(gt[sl]), np.squeeze(pred[sl])
        if background is not None:
            b2 = np.squeeze(background[sl])
            lo, hi = np.percentile(b2, [1, 99]) if b2.size else (0, 1)
            ax.imshow(b2, cmap="gray", vmin=lo, vmax=max(hi, lo + 1), aspect=aspect, origin=origin, interpolation="nearest")
        else:
            ax.imshow(np.zeros_like(g2, dtype=float), cmap="gray", vmin=0, vmax=1, aspect=aspect, origin=origin)
        for value in present:
            colour = cmap((value - 1) % 20)
            if np.any(g2 == value):
                ax.contour((g2 == value).astype(float), levels=[0.5], colors=[colour], linewidths=1.4, origin=origin)
            if np.any(p2 == value):
                ax.contour((p2 == value).astype(float), levels=[0.5], colors=[colour], linewidths=1.2, linestyles="--", origin=origin)
        ax.set_title(f"{title} slice {z if title == 'axial' else y}")
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Line2D([], [], color=cmap((v - 1) % 20), lw=2, label=label_names.get(v, str(v))) for v in present]
    handles += [Line2D([], [], color="black", lw=1.4, label="ground truth"), Line2D([], [], color="black", lw=1.2, ls="--", label="prediction")]
    fig.legend(handles=handles, loc="lower center", ncol=min(8, len(handles)), fontsize=7, frameon=False)
    focus = label_names.get(focus_label, "all labels") if focus_label is not None else "all labels"
    fig.suptitle(f"{case}: slices through {focus}" + ("" if pred_path is not None else " (no prediction)"))
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    return _png(fig)


# --------------------------------------------------------------------------------------
# efficiency figure
# --------------------------------------------------------------------------------------
def timeline_png(efficiency: dict[str, Any], max_cases: int = 12) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = efficiency["cases"][:max_cases]
    fig, (ax_gpu, ax_cpu) = plt.subplots(2, 1, figsize=(10, 6.4), sharex=True)
    gpu_seen = False
    for r in cases:
        tl = r["timeline"]
        t = tl["t"]
        if tl.get("gpu_mb"):
            pts = [(a, b) for a, b in zip(t, tl["gpu_mb"], strict=False) if b is not None]
            if pts:
                gpu_seen = True
                ax_gpu.plot(*zip(*pts, strict=True), lw=1.2, label=r["case"])
        ax_cpu.plot(t, tl["cpu"], lw=1.2, label=r["case"])
    if gpu_seen:
        ax_gpu.axhline(2048, color="#9a3412", ls=":", lw=1)
        ax_gpu.text(0, 2048, " 2 GB allowance", color="#9a3412", va="bottom", fontsize=8)
        ax_gpu.set_ylabel("GPU memory (MB, whole device)")
    else:
        ax_gpu.text(0.5, 0.5, f"GPU figures unavailable:\n{efficiency['gpu']['source']}", ha="center", va="center",
                    transform=ax_gpu.transAxes, fontsize=11, color="#5b6475")
        ax_gpu.set_yticks([])
    ax_cpu.set_ylabel("CPU utilisation (%)")
    ax_cpu.set_xlabel("time since the container was created (s)")
    ax_cpu.set_ylim(0, 105)
    for ax in (ax_gpu, ax_cpu):
        ax.grid(alpha=0.3)
    if cases:
        ax_cpu.legend(fontsize=7, ncol=min(4, len(cases)), loc="upper right")
    title = f"efficiency timeline ({efficiency['mode']}, sampled every {efficiency['settings']['interval_s']} s)"
    if len(efficiency["cases"]) > max_cases:
        title += f"; first {max_cases} of {len(efficiency['cases'])} cases"
    ax_gpu.set_title(title)
    fig.tight_layout()
    return _png(fig)


# --------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------
def _summary_table(results: dict[str, Any]) -> str:
    metrics = results["metrics"]
    rows = [f"<tr><th class=name>label</th><th>id</th>{''.join(f'<th>mean {m}</th><th>worst {m}</th>' for m in metrics)}</tr>"]
    for name, mean in results["mean"].items():
        cells = []
        for m in metrics:
            vals = [c["labels"][name][m] for c in results["cases"] if c["labels"].get(name, {}).get(m) is not None]
            worst = (min(vals) if higher_is_better(m) else max(vals)) if vals else None
            cells.append(f"<td{_shade(mean[m], m)}>{_fmt(mean[m])}</td><td{_shade(worst, m)}>{_fmt(worst)}</td>")
        ident = mean.get("id")
        ident_text = ",".join(map(str, ident)) if isinstance(ident, list) else str(ident)
        rows.append(f"<tr><td class=name>{html.escape(name)}</td><td>{html.escape(ident_text)}</td>{''.join(cells)}</tr>")
    overall = "".join(f"<td>{_fmt(results['overall'][m])}</td><td></td>" for m in metrics)
    rows.append(f"<tr><th class=name>mean</th><td></td>{overall}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _case_table(results: dict[str, Any]) -> str:
    metric = _primary_metric(results)
    names = list(results["mean"])
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = [f"<tr><th class=name>case</th><th>status</th><th>worst {metric}</th>{head}</tr>"]
    for c in ranked_cases(results):
        worst = worst_value(c, metric, higher_is_better(metric))
        cells = "".join(f"<td{_shade(c['labels'].get(n, {}).get(metric), metric)}>{_fmt(c['labels'].get(n, {}).get(metric))}</td>" for n in names)
        status = c["status"] + (f": {c['error']}" if c.get("error") else "")
        css = "ok" if c["status"] == "ok" else "warn"
        rows.append(f"<tr><td class=name>{html.escape(c['case'])}</td><td class='name {css}'>{html.escape(status)}</td>"
                    f"<td{_shade(worst, metric)}>{_fmt(worst)}</td>{cells}</tr>")
    return f"<p class=meta>{html.escape(metric)} per label, worst case first.</p><div class=scroll><table>" + "".join(rows) + "</table></div>"


def _efficiency_table(eff: dict[str, Any]) -> str:
    cols = [("time_s", "time (s)", 2), ("max_gpu_mb", "max GPU (MB)", 0), ("auc_gpu", "AUC-GPU (MB·s)", 0),
            ("auc_gpu_over_2gb", "AUC-GPU over 2 GB", 0), ("max_cpu", "max CPU (%)", 1), ("auc_cpu", "AUC-CPU (%·s)", 1),
            ("max_ram_mb", "max RAM (MB)", 0)]
    rows = ["<tr><th class=name>case</th><th>status</th>" + "".join(f"<th>{t}</th>" for _, t, _ in cols) + "</tr>"]
    for r in eff["cases"]:
        css = "ok" if r["status"] == "ok" else "warn"
        rows.append(f"<tr><td class=name>{html.escape(r['case'])}</td><td class='name {css}'>{html.escape(r['status'])}</td>"
                    + "".join(f"<td>{_fmt(r.get(k), d)}</td>" for k, _, d in cols) + "</tr>")
    rows.append("<tr><th class=name>mean</th><td></td>" + "".join(f"<td>{_fmt(eff['mean'].get(k), d)}</td>" for k, _, d in cols) + "</tr>")
    return "<div class=scroll><table>" + "".join(rows) + "</table></div>"


def _label_names(results: dict[str, Any]) -> dict[int, str]:
    out = {}
    for name, entry in results["mean"].items():
        ident = entry.get("id")
        if isinstance(ident, int):
            out[ident] = name
    return out


def _overlay_cases(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    ranked = [c for c in ranked_cases(results) if c["status"] != "failed"]
    if not ranked:
        return []
    picks = [("worst", ranked[0]), ("median", ranked[len(ranked) // 2])]
    return picks if picks[0][1]["case"] != picks[1][1]["case"] else picks[:1]


def write_report(
    out_dir: str | Path,
    *,
    accuracy: dict[str, Any] | None = None,
    efficiency: dict[str, Any] | None = None,
    pred_dir: str | Path | None = None,
    gt_dir: str | Path | None = None,
    image_dir: str | Path | None = None,
) -> Path:
    """Write `report.html` and the PNGs into `out_dir`; returns the page's path."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        from pipeline.errors import SegpipeError

        raise SegpipeError("--report needs matplotlib: pip install 'segpipe[report]'") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts: list[str] = []
    title = "segpipe evaluation report"
    figures: dict[str, bytes] = {}
    if accuracy is not None:
        task = accuracy["task"]
        title = f"segpipe: {task} evaluation"
        parts.append(f"<h2>Summary</h2><p class=meta>{len(accuracy['cases'])} case(s); missing {len(accuracy['missing'])}; "
                     f"failed {len(accuracy['failed'])}; unmatched predictions {len(accuracy['unmatched'])}.</p>")
        for key in ("missing", "failed", "unmatched"):
            if accuracy[key]:
                parts.append(f"<p class=warn>{key}: {html.escape(', '.join(accuracy[key]))}</p>")
        parts.append(_summary_table(accuracy))
        figures["boxplots.png"] = boxplot_png(accuracy)
        parts.append("<h2>Per-label distributions</h2>" + _img_tag(figures["boxplots.png"], "box plots"))
        parts.append("<h2>Cases, worst first</h2>" + _case_table(accuracy))
        if pred_dir is not None and gt_dir is not None:
            parts.append(_overlay_section(accuracy, Path(pred_dir), Path(gt_dir), Path(image_dir) if image_dir else None, figures))
    if efficiency is not None:
        if accuracy is None:
            title = "segpipe: efficiency report"
        figures["efficiency_timeline.png"] = timeline_png(efficiency)
        desc = (f"mode {efficiency['mode']}; image {efficiency.get('image') or '-'}; command "
                f"<code>{html.escape(' '.join(efficiency['command']))}</code>; GPU: {html.escape(efficiency['gpu']['source'])}")
        parts.append(f"<h2>Efficiency</h2><p class=meta>{desc}</p>" + _efficiency_table(efficiency)
                     + _img_tag(figures["efficiency_timeline.png"], "efficiency timeline"))
    for name, data in figures.items():
        atomic_write_bytes(out / name, data)
    page = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>\n")
    path = out / "report.html"
    atomic_write_text(path, page)
    return path


def _overlay_section(results: dict[str, Any], pred_dir: Path, gt_dir: Path, image_dir: Path | None, figures: dict[str, bytes]) -> str:
    from evaluation.matching import match_cases
    from pipeline.errors import SegpipeError

    try:
        pairs = {p.case: p for p in match_cases(pred_dir, gt_dir).pairs}
    except SegpipeError as exc:
        return f"<h2>Overlays</h2><p class=warn>{html.escape(str(exc))}</p>"
    names = _label_names(results)
    ids = {n: e.get("id") for n, e in results["mean"].items()}
    metric = _primary_metric(results)
    html_parts = ["<h2>Overlays: worst and median case</h2><p class=meta>Ground truth solid, prediction dashed; "
                  "slices through the centre of the case's worst label.</p>"]
    for which, case in _overlay_cases(results):
        pair = pairs.get(case["case"])
        if pair is None:
            continue
        better = higher_is_better(metric)
        scored = [(e[metric], n) for n, e in case["labels"].items() if e.get(metric) is not None]
        worst_name = (min(scored) if better else max(scored))[1] if scored else None
        focus = ids.get(worst_name) if worst_name is not None else None
        focus_id = focus if isinstance(focus, int) else None
        image_path = None
        if image_dir is not None:
            image_path = next((p for p in sorted(image_dir.glob(f"{case['case']}_0000.*"))), None)
        try:
            png = overlay_png(case["case"], pair.gt, pair.pred, image_path, names, focus_id)
        except Exception as exc:  # a broken file must not lose the rest of the report
            log.warning("overlay for %s failed: %s", case["case"], exc)
            html_parts.append(f"<p class=warn>{which} case {html.escape(case['case'])}: overlay failed ({html.escape(str(exc))})</p>")
            continue
        fname = f"overlay_{which}_{case['case']}.png"
        figures[fname] = png
        html_parts.append(f"<h3>{which} case: {html.escape(case['case'])} (worst label {html.escape(str(worst_name))})</h3>"
                          + _img_tag(png, f"{which} case overlay"))
    return "".join(html_parts)
