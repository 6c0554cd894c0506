"""The HTML report: self-contained (no external assets), every section present, PNGs valid,
and it renders in a real headless browser (Debian chromium; skipped when absent)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from test_eval_flare import make_dataset, write_label

from evaluation.efficiency import Timeline, summarise
from evaluation.flare import evaluate_flare
from evaluation.report import ranked_cases, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_efficiency(n: int = 3, gpu: bool = True) -> dict:
    cases = []
    for i in range(n):
        t = [k * 0.1 for k in range(60 + 10 * i)]
        tl = Timeline(0.1, t=t, gpu_mb=[float(round(300 + (2500 - 400 * i) * np.sin(k / 20) ** 2, -1)) for k in range(len(t))] if gpu else None,
                      cpu=[40 + 30 * np.cos(k / (9 + 3 * i)) for k in range(len(t))], ram_mb=[900.0] * len(t))
        cases.append({"case": f"FLARE22_Tr_{i:04d}", "status": "ok", "exit_code": 0, "time_s": t[-1], **summarise(tl),
                      "outputs": [], "log_tail": "", "timeline": tl.to_json()})
    return {"task": "efficiency", "mode": "docker", "image": "team:latest", "command": ["/bin/bash", "-c", "sh predict.sh"],
            "settings": {"interval_s": 0.1}, "gpu": {"available": gpu, "source": "GPU 0 via nvidia-smi" if gpu else "nvidia-smi not found"},
            "cases": cases, "mean": {k: None if cases[0][k] is None else float(np.mean([c[k] for c in cases])) for k in ("time_s", "max_gpu_mb", "auc_gpu", "auc_gpu_over_2gb", "max_cpu", "auc_cpu", "max_ram_mb", "auc_ram")}}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    pred_dir, gt_dir = make_dataset(root, 4)
    images = root / "images"
    for p in sorted(gt_dir.iterdir()):  # a CT-like background for the overlays
        arr = np.random.default_rng(0).normal(40, 20, (30, 48, 44)).astype(np.int16)
        write_label(images / p.name.replace(".nii.gz", "_0000.nii.gz"), arr)
    results = evaluate_flare(pred_dir, gt_dir, workers=1)
    out = root / "out"
    write_report(out, accuracy=results, efficiency=fake_efficiency(), pred_dir=pred_dir, gt_dir=gt_dir, image_dir=images)
    (out / "results.json").write_text(json.dumps(results))
    return out


def test_report_is_self_contained_with_every_section(report):
    page = (report / "report.html").read_text()
    for heading in ("Summary", "Per-label distributions", "Cases, worst first", "Overlays: worst and median case", "Efficiency"):
        assert heading in page
    # no external assets: every src is inline data, no links, no remote fonts/scripts
    assert all(v.startswith("data:") for v in re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page))
    assert "http://" not in page and "https://" not in page and "<script" not in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 4  # box plots, the worst and the median case's overlays, the efficiency timeline
    for data in images:
        assert base64.b64decode(data).startswith(PNG_MAGIC)
    files = sorted(p.name for p in report.glob("*.png"))
    assert "boxplots.png" in files and "efficiency_timeline.png" in files
    assert sum(name.startswith("overlay_worst_") for name in files) == 1
    assert sum(name.startswith("overlay_median_") for name in files) == 1


def test_case_table_is_sorted_by_worst_label(report):
    results = json.loads((report / "results.json").read_text())
    ranked = ranked_cases(results)
    worst = [min(e["dsc"] for e in c["labels"].values()) for c in ranked]
    assert worst == sorted(worst)
    page = (report / "report.html").read_text()
    positions = [page.index(f">{c['case']}<") for c in ranked]
    assert positions == sorted(positions)


def test_report_without_gpu_says_unavailable(tmp_path):
    page = write_report(tmp_path, efficiency=fake_efficiency(2, gpu=False)).read_text()
    assert "nvidia-smi not found" in page and "Efficiency" in page


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="Debian chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report):
    shot = report / "screenshot.png"
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--hide-scrollbars", "--window-size=1280,2400", f"--screenshot={shot}", (report / "report.html").as_uri()],
            capture_output=True, text=True, timeout=120,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = shot.read_bytes()
    assert data.startswith(PNG_MAGIC)
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.shape[0] >= 2000 and pixels.shape[1] >= 1200
    # the page rendered content (images, tables), not a blank or error page
    assert pixels[..., :3].std() > 0.05
    # chromium's --dump-dom sees the same tables
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                              "--dump-dom", (report / "report.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<img") == 4 and "liver" in dom

