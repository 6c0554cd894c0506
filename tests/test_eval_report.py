"""The HTML report: self-contained (no external assets), every section present, PNGs valid, the
median case's overlay beside the summary, and it renders in a real headless browser (Debian
chromium; skipped when absent), where the demo page's overlays are on the first screen."""

from __future__ import annotations

import base64
import html
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
    for heading in ("Summary", "Per-label distributions", "Cases, worst first", "Overlays: worst case", "Efficiency"):
        assert heading in page
    # no external assets: every src is inline data, no links, no remote fonts/scripts
    assert all(v.startswith("data:") for v in re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page))
    assert "http://" not in page and "https://" not in page and "<script" not in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 4  # the median case's overlay (top), box plots, the worst case's overlay, the timeline
    for data in images:
        assert base64.b64decode(data).startswith(PNG_MAGIC)
    files = sorted(p.name for p in report.glob("*.png"))
    assert "boxplots.png" in files and "efficiency_timeline.png" in files
    assert sum(name.startswith("overlay_worst_") for name in files) == 1
    assert sum(name.startswith("overlay_median_") for name in files) == 1


def test_first_screen_is_the_summary_beside_the_median_case(report):
    results = json.loads((report / "results.json").read_text())
    means = sorted((float(np.mean([e["dsc"] for e in c["labels"].values()])), c["case"])
                   for c in results["cases"] if c["status"] == "ok")
    median = means[(len(means) - 1) // 2][1]
    worst = ranked_cases(results)[0]["case"]
    assert median != worst  # the fixture shows both figures
    page = (report / "report.html").read_text()
    top = page[page.index("<div class=top>"):page.index("<h2>Per-label distributions")]
    assert top.index("<h2>Summary</h2>") < top.index("<table>") < top.index("<figure class=overlay>")
    assert f"Median case by mean DSC: {median} (DSC {means[(len(means) - 1) // 2][0]:.3f}, 2 of 4 scored cases)" in top
    index = json.loads((report / "overlay.json").read_text())  # what the demo page shows
    assert index["case"] == median and index["png"] == f"overlay_median_{median}.png"
    png = base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)"', top).group(1))
    assert png == (report / index["png"]).read_bytes() and png.startswith(PNG_MAGIC) and len(png) < 150_000
    assert f"overlay_worst_{worst}.png" in {p.name for p in report.glob("*.png")}


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


def run_headless(page: Path, *args: str) -> subprocess.CompletedProcess:
    """Debian's chromium, headless, offline, with a throwaway profile, on `page`."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--hide-scrollbars", *args, page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.mark.skipif(chromium() is None, reason="Debian chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report):
    shot = report / "screenshot.png"
    run_headless(report / "report.html", "--window-size=1280,2400", f"--screenshot={shot}")
    data = shot.read_bytes()
    assert data.startswith(PNG_MAGIC)
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.shape[0] >= 2000 and pixels.shape[1] >= 1200
    # the page rendered content (images, tables), not a blank or error page
    assert pixels[..., :3].std() > 0.05
    # chromium's --dump-dom sees the same tables
    dom = run_headless(report / "report.html", "--dump-dom").stdout
    assert dom.count("<img") == 4 and "liver" in dom



# the demo page: each task's overlay next to the headline table, on the first screen -------------
def write_brats_case(root: Path, case: str, shift: int) -> None:
    """A tumour (edema around a necrotic core in an enhancing rim) in a bright ellipsoid 'brain';
    the prediction is the ground truth moved by `shift` voxels."""
    zz, yy, xx = np.mgrid[:24, :40, :36]
    r = np.sqrt(((zz - 12) / 1.0) ** 2 + ((yy - 18) / 1.2) ** 2 + ((xx - 20) / 1.1) ** 2)
    gt = np.select([r < 2.5, r < 4.5, r < 8], [1, 3, 2], 0).astype(np.uint8)
    brain = (((zz - 12) / 11) ** 2 + ((yy - 20) / 18) ** 2 + ((xx - 18) / 16) ** 2) < 1
    image = (brain * (300 + 60 * np.random.default_rng(shift).normal(size=gt.shape)) + 400 * (gt == 3)).astype(np.float32)
    write_label(root / "gt" / f"{case}.nii.gz", gt)
    write_label(root / "pred" / f"{case}.nii.gz", np.roll(gt, shift, axis=2))
    write_label(root / "images" / case / f"{case}-t1c.nii.gz", image)


@pytest.fixture(scope="module")
def demo_page(tmp_path_factory, report) -> Path:
    """`segpipe demo`'s page from two evaluation reports on small synthetic inputs (no training)."""
    from evaluation.brats import evaluate_brats
    from pipeline.commands import demo

    root = tmp_path_factory.mktemp("demo_page")
    for i, shift in enumerate((0, 1, 2)):
        write_brats_case(root, f"BraTS-GLI-{i:05d}-000", shift)
    brats = evaluate_brats(root / "pred", root / "gt", convention="2023", workers=1)
    brats_report = write_report(root / "brats_report", accuracy=brats, pred_dir=root / "pred", gt_dir=root / "gt",
                                image_dir=root / "images")
    flare = json.loads((report / "results.json").read_text())
    rows = [{"task": "flare", "headline": demo._headline("flare", flare), "zip": "submissions/flare.zip",
             "report": str(report / "report.html")},
            {"task": "brats", "headline": demo._headline("brats", brats), "zip": "submissions/brats.zip",
             "report": str(brats_report)}]
    return demo._report_page(root, rows)


def test_demo_page_has_each_task_overlay_beside_the_headline_table(demo_page):
    page = demo_page.read_text()
    top = page[page.index("<div class='top'>"):page.index("<iframe")]
    assert top.index("Headline metrics") < top.index("</table>") < top.index("<figure class=overlay>")
    captions = re.findall(r"<figcaption>([^<]+)</figcaption>", top)
    assert [c.split(":")[0] for c in captions] == ["flare", "brats"]
    assert "Median case by mean Dice: BraTS-GLI-00001-000" in captions[1]  # shifts 0, 1, 2 voxels
    for data in re.findall(r'src="data:image/png;base64,([^"]+)"', top):
        png = base64.b64decode(data)
        assert png.startswith(PNG_MAGIC) and len(png) < 150_000
    assert "http://" not in top and "https://" not in top and "<script" not in page.split("<iframe")[0]


FIRST_SCREEN_PROBE = """<script>
window.addEventListener('load', () => {
  const boxes = [...document.querySelectorAll('body > .top figure.overlay img')].map(img => {
    const r = img.getBoundingClientRect();
    return {top: r.top, bottom: r.bottom, left: r.left, right: r.right, natural: img.naturalWidth};
  });
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({w: innerWidth, h: innerHeight, boxes: boxes});
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.skipif(chromium() is None, reason="Debian chromium not installed (apt-get install chromium)")
def test_demo_page_overlays_are_on_the_first_screen_in_chromium(demo_page, tmp_path):
    """In a 1280×800 window, with nothing scrolled, every task's overlay image is decoded and lies
    wholly inside the viewport (a tiny script writes the images' boxes into the DOM; --dump-dom
    reads them back)."""
    probe = tmp_path / "probe.html"
    probe.write_text(demo_page.read_text().replace("</body>", FIRST_SCREEN_PROBE + "</body>"))
    proc = run_headless(probe, "--window-size=1280,800", "--virtual-time-budget=5000", "--dump-dom")
    found = re.search(r'<pre id="probe">([^<]+)</pre>', proc.stdout)
    assert found, proc.stdout[-2000:]
    seen = json.loads(html.unescape(found.group(1)))
    # a 1280×800 window; its viewport (innerHeight) is smaller where the browser keeps room for its own bars
    assert seen["w"] == 1280 and 500 <= seen["h"] <= 800
    assert len(seen["boxes"]) == 2
    for box in seen["boxes"]:
        assert box["natural"] > 0 and box["bottom"] - box["top"] > 100  # decoded and shown, not a sliver
        assert box["top"] >= 0 and box["bottom"] <= seen["h"] and box["right"] <= seen["w"], box
