"""The weights' manifest records the training data: `segpipe synth` → prepare → (trained
stages) → package_work carries the synth manifest's generator, seed, size and case count into
manifest.json; other data folders are named; old manifests and work folders stay readable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prepare_fixtures import SMALL, write_flare

from pipeline.case_index import CaseIndex
from pipeline.cli import main
from pipeline.synth import write_flare_dataset
from pipeline.weights import load_weights, package_work, read_manifest

REPO = Path(__file__).resolve().parent.parent


def prepare(data: Path, work: Path) -> None:
    assert main(["prepare", "--data", str(data), "--work", str(work), "--workers", "1", *SMALL]) == 0


def fake_training(work: Path) -> None:
    """What `segpipe train coarse|fine` leaves for export (random-initialised networks): the
    manifest's training data does not depend on the weights' values."""
    import torch
    from safetensors.torch import save_file

    from pipeline.training.export import build_stage_model, stage_dir

    torch.manual_seed(0)
    for stage in ("coarse", "fine"):
        model = build_stage_model(stage, {"in_channels": 1, "num_classes": 14, "channels": [4, 8], "blocks": 1})
        out = stage_dir(work, stage)
        out.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "best.safetensors"))
        (out / "model_config.json").write_text(json.dumps({
            "stage": stage, "model": model.cfg, "num_classes": 14, "sample_stage": stage, "patch_size": None,
            "sample_size": [16, 24, 24] if stage == "coarse" else [12, 24, 24]}))


@pytest.fixture(scope="module")
def synth_work(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("weights_manifest")
    data, work = root / "synth_data", root / "work"
    write_flare_dataset(data, cases=2, unlabeled=1, seed=5, size="small")
    prepare(data, work)
    return data, work


def test_prepare_records_the_synth_manifest(synth_work):
    _, work = synth_work
    expected = {"synthetic": True, "generator": "segpipe synth", "kind": "flare", "seed": 5, "size": "small",
                "orientation": "lps", "cases": 3}
    assert json.loads((work / "prepare_report.json").read_text())["training_data"] == expected
    with CaseIndex(work) as index:
        assert index.get_meta("prepare")["training_data"] == expected


def test_package_copies_the_training_data_into_the_manifest(synth_work, tmp_path):
    data, work = synth_work
    fake_training(work)
    # the data folder is gone by packaging time: what prepare recorded is what counts
    (data / "synth.json").rename(data / "synth.json.moved")
    try:
        manifest_path = package_work(work, tmp_path / "w", fp16=True)
    finally:
        (data / "synth.json.moved").rename(data / "synth.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["training_data"] == {"synthetic": True, "generator": "segpipe synth", "kind": "flare", "seed": 5,
                                         "size": "small", "orientation": "lps", "cases": 3}
    assert load_weights(tmp_path / "w").manifest["training_data"]["synthetic"] is True
    # a caller's own record wins over prepare's
    again = package_work(work, tmp_path / "w2", extra={"training_data": {"synthetic": False, "source": "x"}})
    assert json.loads(again.read_text())["training_data"] == {"synthetic": False, "source": "x"}


def test_work_folder_from_before_the_record_packages_with_null(synth_work, tmp_path):
    import shutil

    _, work = synth_work
    old = tmp_path / "old_work"
    shutil.copytree(work, old)
    with CaseIndex(old, writable=True) as index:
        meta = index.get_meta("prepare")
        del meta["training_data"]
        index.set_meta("prepare", meta)
    if not (old / "train" / "coarse" / "best.safetensors").is_file():
        fake_training(old)
    manifest = json.loads(package_work(old, tmp_path / "w").read_text())
    assert "training_data" in manifest and manifest["training_data"] is None


def test_real_data_folder_is_named(tmp_path):
    data, work = write_flare(tmp_path / "FLARE22_subset", labeled=2, unlabeled=0), tmp_path / "work"
    prepare(data, work)
    assert json.loads((work / "prepare_report.json").read_text())["training_data"] == {
        "synthetic": False, "source": "FLARE22_subset"}


def test_shipped_manifests_say_synthetic_with_or_without_the_field():
    flare = read_manifest(REPO / "model_weights" / "flare_demo")
    assert flare["training_data"]["synthetic"] is True and flare["training_data"]["seed"] == 1
    brats = read_manifest(REPO / "model_weights" / "brats_demo")
    assert brats["training_data"]["synthetic"] is True and "synthetic" in brats["trained_on"]
