"""`segpipe demo`: the whole stage graph on synthetic data (shrunk here), the summary page, the BraTS split."""

from __future__ import annotations

import json
import zipfile

import pytest

from pipeline.commands import demo


@pytest.mark.slow
def test_demo_flare_end_to_end_small(tmp_path, monkeypatch, capsys):
    """Every stage as a real subprocess (most of the ~1 min is seven torch imports)."""

    import yaml

    from pipeline.cli import main

    monkeypatch.setattr(demo, "FLARE_DATA", {"cases": 3, "unlabeled": 1, "validation": 1})
    tiny, _ = demo.demo_config("flare")  # configs/demo_flare.yaml, shrunk and from scratch
    tiny["prepare"].update(coarse_size=[16, 32, 32], fine_size=[16, 32, 32], fine_spacing=None, folds=3)
    for stage in ("coarse", "fine"):
        tiny[stage]["model"]["channels"] = [4, 8]
        tiny[stage]["train"].update(iters_per_epoch=None, init_weights=None, patch_size=None)
    (tmp_path / "tiny_demo_flare.yaml").write_text(yaml.safe_dump(tiny))
    monkeypatch.setitem(demo.CONFIGS, "flare", str(tmp_path / "tiny_demo_flare.yaml"))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--tasks", "flare", "--epochs-scale", "0.1"]) == 0
    printed = capsys.readouterr().out
    assert "segpipe demo: done" in printed and "mean DSC" in printed and "mean NSD" in printed
    assert "trained from scratch" in printed
    page = (out / "report.html").read_text()
    assert "Headline metrics" in page and "srcdoc=" in page and "http://" not in page.split("srcdoc=")[0]
    # the first screen: the median validation case's overlay beside the headline table
    assert "<figure class=overlay>" in page.split("<iframe")[0] and "flare: Median case by mean DSC" in page
    metrics = json.loads((out / "flare" / "work" / "metrics.json").read_text())
    assert f"{metrics['overall']['dsc']:.4f}" in page  # the page shows the real numbers
    with zipfile.ZipFile(out / "submissions" / "flare.zip") as zf:
        assert zf.namelist() == ["FLARE22_Val_0001.nii.gz"]
    markers = sorted(p.stem for p in (out / "flare" / "work" / ".stages").glob("*.json"))
    assert markers == sorted(["prepare", "train-coarse", "train-fine", "package", "predict", "evaluate", "submit"])
    # a second run finds everything done
    assert main(["demo", "--out", str(out), "--tasks", "flare", "--epochs-scale", "0.1"]) == 0
    assert all(json.loads(p.read_text())["status"] == "done" for p in (out / "flare" / "work" / ".stages").glob("*"))


def test_brats_split_keeps_labels_out_of_inputs(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "BRATS_DATA", {"cases": 1, "test": 2, "missing_rates": "t1=0.5"})
    demo._synth_brats(tmp_path)
    cases = sorted(p.name for p in (tmp_path / "input").iterdir())
    assert len(cases) == 2
    assert sorted(p.name for p in (tmp_path / "gt").iterdir()) == [f"{c}.nii.gz" for c in cases]
    for c in cases:
        files = [p.name for p in (tmp_path / "input" / c).iterdir()]
        assert files and not any("seg" in f for f in files)


def test_headline_metrics():
    assert demo._headline("flare", {"overall": {"dsc": 0.5, "nsd": 0.25}}) == {"mean DSC": 0.5, "mean NSD": 0.25}
    brats = {"mean": {"ET": {"dice": 0.1}, "TC": {"dice": 0.2}, "WT": {"dice": 0.3}}}
    assert demo._headline("brats", brats) == {"Dice ET": 0.1, "Dice TC": 0.2, "Dice WT": 0.3}


def test_unknown_task_is_an_error():
    from pipeline.cli import main

    assert main(["demo", "--out", "/nonexistent/x", "--tasks", "lungs"]) == 2


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch):
    monkeypatch.setenv("SEGPIPE_PROGRESS", "0")


