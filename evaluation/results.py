"""The results document: one stable JSON schema, a per-case CSV and a compact table.

Schema (documented in the README)::

    {"task": "flare" | "brats-legacy" | "brats-2023",
     "metrics": ["dsc", "nsd"],                        # the per-label metrics, in order
     "cases": [{"case": ID, "status": "ok" | "missing" | "failed",
                "error": "why" (failed only),
                "labels": {NAME: {"id": LABEL_ID, "dsc": x, "nsd": y, ...}}}],
     "mean": {NAME: {"id": LABEL_ID, "dsc": x, ...}},  # over all cases, penalties included
     "overall": {"dsc": x, ...},                       # mean of the per-label means
     "missing": [ID, ...], "failed": [ID, ...], "unmatched": [FILE_ID, ...],
     "settings": {...}}                                # what the numbers depend on

Missing and failed cases carry the organisers' penalty values, so the means are what a
leaderboard would show. Non-finite numbers never appear (each challenge rule replaces them).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.fsutil import atomic_write_text


@dataclass
class CaseResult:
    case: str
    labels: dict[str, dict[str, Any]]  # NAME → {"id": ..., metric: value, ...}
    status: str = "ok"
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"case": self.case, "status": self.status}
        if self.error:
            out["error"] = self.error
        out["labels"] = self.labels
        out.update(self.extra)
        return out


def _mean(values: list[float]) -> float | None:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(finite) / len(finite) if finite else None


def build_results(
    task: str,
    metrics: list[str],
    cases: list[CaseResult],
    *,
    unmatched: list[str] | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    names: list[str] = []
    ids: dict[str, Any] = {}
    for c in cases:
        for name, entry in c.labels.items():
            if name not in ids:
                names.append(name)
                ids[name] = entry.get("id")
    mean = {
        name: {"id": ids[name], **{m: _mean([c.labels[name].get(m) for c in cases if name in c.labels]) for m in metrics}}
        for name in names
    }
    overall = {m: _mean([mean[n][m] for n in names]) for m in metrics}
    return {
        "task": task,
        "metrics": list(metrics),
        "cases": [c.to_json() for c in cases],
        "mean": mean,
        "overall": overall,
        "missing": [c.case for c in cases if c.status == "missing"],
        "failed": [c.case for c in cases if c.status == "failed"],
        "unmatched": list(unmatched or []),
        "settings": dict(settings or {}),
    }


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_json(results: dict[str, Any], path: str | Path) -> None:
    atomic_write_text(path, json.dumps(_clean(results), indent=2, allow_nan=False) + "\n")


def load_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def csv_text(results: dict[str, Any]) -> str:
    """One row per case: case, status, then `<label>_<metric>` columns."""
    metrics = results["metrics"]
    names = list(results["mean"])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "status", *[f"{n}_{m}" for n in names for m in metrics]])
    for c in results["cases"]:
        row = [c["case"], c["status"]]
        for n in names:
            entry = c["labels"].get(n, {})
            row += ["" if entry.get(m) is None else f"{entry[m]:.6g}" for m in metrics]
        writer.writerow(row)
    return buf.getvalue()


def write_csv(results: dict[str, Any], path: str | Path) -> None:
    atomic_write_text(path, csv_text(results))


def worst_value(case: dict[str, Any], metric: str, higher_is_better: bool = True) -> float:
    values = [e[metric] for e in case["labels"].values() if e.get(metric) is not None]
    if not values:
        return math.nan
    return min(values) if higher_is_better else max(values)


def format_table(results: dict[str, Any]) -> str:
    """Per-label means (and the worst case per label) as a fixed-width table for a terminal."""
    metrics = results["metrics"]
    names = list(results["mean"])
    n_cases = len(results["cases"])
    width = max([len(n) for n in names] + [7])
    header = f"{'label':<{width}}  " + "  ".join(f"{m:>16}" for m in metrics)
    lines = [f"{results['task']}: {n_cases} case(s)", header, "-" * len(header)]

    def fmt(v: Any) -> str:
        return "       -" if v is None else f"{v:8.4f}"

    for n in names:
        cells = []
        for m in metrics:
            vals = [c["labels"][n].get(m) for c in results["cases"] if n in c["labels"]]
            vals = [v for v in vals if v is not None]
            lo = (min(vals) if m in _HIGHER_IS_BETTER else max(vals)) if vals else None
            cells.append(f"{fmt(results['mean'][n][m])} ({fmt(lo).strip():>6})")
        lines.append(f"{n:<{width}}  " + "  ".join(f"{c:>16}" for c in cells))
    lines.append("-" * len(header))
    lines.append(f"{'mean':<{width}}  " + "  ".join(f"{fmt(results['overall'][m]):>16}" for m in metrics))
    lines.append("(mean over cases, worst case in brackets)")
    for key in ("missing", "failed", "unmatched"):
        if results.get(key):
            shown = ", ".join(results[key][:10]) + (" ..." if len(results[key]) > 10 else "")
            lines.append(f"{key} ({len(results[key])}): {shown}")
    return "\n".join(lines)


# metrics where larger is better (the rest — distances, counts of errors — are smaller-better)
_HIGHER_IS_BETTER = frozenset({"dsc", "nsd", "dice", "lesionwise_dice", "lesionwise_nsd"})


def higher_is_better(metric: str) -> bool:
    return metric in _HIGHER_IS_BETTER
