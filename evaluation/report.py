"""A report people read: one self-contained HTML page (PNGs inlined as base64, no external
assets, opens offline) plus the same PNGs as files.

Sections, each present when its data is: summary of the means with the median case's overlay
beside it (evaluation/overlay.py: image | ground truth | prediction), so the first screen shows
both numbers and a picture; per-label box plots; the per-case table sorted by the worst label;
the worst case's overlay through its worst label; the efficiency table and timeline (GPU
memory and CPU over time).
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

from evaluation.overlay import FIRST_SCREEN_CSS
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
.warn{color:#9a3412}.ok{color:#166534}.top h2{margin-top:8px}
""" + FIRST_SCREEN_CSS


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
        images = Path(image_dir) if image_dir else None
        pairs, problem = _pairs(pred_dir, gt_dir)
        summary = [f"<h2>Summary</h2><p class=meta>{len(accuracy['cases'])} case(s); missing {len(accuracy['missing'])}; "
                   f"failed {len(accuracy['failed'])}; unmatched predictions {len(accuracy['unmatched'])}.</p>"]
        for key in ("missing", "failed", "unmatched"):
            if accuracy[key]:
                summary.append(f"<p class=warn>{key}: {html.escape(', '.join(accuracy[key]))}</p>")
        summary.append(_summary_table(accuracy))
        parts.append(f"<div class=top><div>{''.join(summary)}</div>{_median_figure(accuracy, pairs, images, out)}</div>")
        figures["boxplots.png"] = boxplot_png(accuracy)
        parts.append("<h2>Per-label distributions</h2>" + _img_tag(figures["boxplots.png"], "box plots"))
        parts.append("<h2>Cases, worst first</h2>" + _case_table(accuracy))
        if problem:
            parts.append(f"<h2>Overlays</h2><p class=warn>{html.escape(problem)}</p>")
        elif pairs:
            parts.append(_worst_section(accuracy, pairs, images, figures))
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


def _pairs(pred_dir: str | Path | None, gt_dir: str | Path | None) -> tuple[dict[str, Any], str | None]:
    """Case → matched prediction/ground-truth files, or the reason there are none."""
    from evaluation.matching import match_cases
    from pipeline.errors import SegpipeError

    if pred_dir is None or gt_dir is None:
        return {}, None
    try:
        return {p.case: p for p in match_cases(Path(pred_dir), Path(gt_dir)).pairs}, None
    except SegpipeError as exc:
        return {}, str(exc)


def _median_figure(results: dict[str, Any], pairs: dict[str, Any], image_dir: Path | None, out: Path) -> str:
    """The median case's overlay for the first screen, also saved for the demo page."""
    from evaluation.overlay import OVERLAY_INDEX, median_overlay, save_overlay

    (out / OVERLAY_INDEX).unlink(missing_ok=True)  # no stale figure from an earlier run
    if not pairs:
        return ""
    try:
        overlay = median_overlay(results, pairs, image_dir)
    except Exception as exc:  # a broken file must not lose the rest of the report
        log.warning("median-case overlay failed: %s", " ".join(str(exc).split()))
        return f"<p class=warn>median-case overlay failed ({html.escape(str(exc))})</p>"
    if overlay is None:
        return ""
    save_overlay(overlay, out, f"overlay_median_{overlay.case}.png")
    return overlay.html()


def _worst_section(results: dict[str, Any], pairs: dict[str, Any], image_dir: Path | None, figures: dict[str, bytes]) -> str:
    """The worst case's overlay, through its worst label (the median case is at the top)."""
    from evaluation.overlay import find_case_image, median_case, metric_name, render

    ranked = [c for c in ranked_cases(results) if c["status"] != "failed" and c["case"] in pairs]
    median = median_case(results)
    if not ranked or (median is not None and ranked[0]["case"] == median[0]["case"]):
        return ""
    case, metric = ranked[0], _primary_metric(results)
    better = higher_is_better(metric)
    scored = [(e[metric], n) for n, e in case["labels"].items() if e.get(metric) is not None]
    worst_name = (min(scored) if better else max(scored))[1] if scored else None
    ident = case["labels"].get(worst_name, {}).get("id") if worst_name is not None else None
    focus = ident if isinstance(ident, int) else None  # a BraTS region (several labels): its whole foreground
    caption = (f"Worst case by its worst label's {metric_name(metric)}: {case['case']} (worst label {worst_name}). "
               "Image, ground truth, prediction; slices through the largest cross-section of "
               f"{'that label' if focus is not None else 'the ground truth'}.")
    pair = pairs[case["case"]]
    if pair.pred is None:
        caption += " No prediction was written for it: the prediction panels are empty."
    try:
        overlay = render(case["case"], pair.gt, pair.pred, find_case_image(image_dir, case["case"]), results["task"],
                         focus_label=focus, caption=caption)
    except Exception as exc:  # a broken file must not lose the rest of the report
        log.warning("overlay for %s failed: %s", case["case"], exc)
        return f"<h2>Overlays: worst case</h2><p class=warn>{html.escape(case['case'])}: overlay failed ({html.escape(str(exc))})</p>"
    figures[f"overlay_worst_{case['case']}.png"] = overlay.png
    return f"<h2>Overlays: worst case</h2>{overlay.html()}"
