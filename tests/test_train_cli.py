"""`segpipe train coarse|fine --work WORK` on a prepared (tiny) FLARE-like folder, then resume and export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main

TINY = ["--set", "train.num_threads=1", "--set", "train.val_every=2"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    from prepare_fixtures import write_flare

    root = tmp_path_factory.mktemp("train_cli")
    write_flare(root / "data", labeled=4, unlabeled=2)
    rc = main(["prepare", "--data", str(root / "data"), "--work", str(root / "work"),
               "--set", "prepare.coarse_size=[16,24,24]", "--set", "prepare.fine_size=[16,24,24]",
               "--set", "prepare.folds=2"])
    assert rc == 0
    return root / "work"


def test_train_coarse_with_cps_uif_then_resume(work: Path, monkeypatch) -> None:
    monkeypatch.setenv("SEGPIPE_PROGRESS", "0")
    args = ["train", "coarse", "--work", str(work), "--set", "coarse.model.channels=[4,8,16]",
            "--set", "train.cps.enabled=true", "--set", "train.uif.enabled=true", "--set", "train.uif.refresh_every=1",
            *TINY]
    assert main([*args, "--set", "coarse.train.epochs=2"]) == 0
    out = work / "train" / "coarse"
    info = json.loads((out / "model_config.json").read_text())
    assert info["model"]["num_classes"] == 14 and info["sample_size"] == [16, 24, 24]
    assert json.loads((out / "uif" / "ranking.json").read_text())["total"] == 2
    from pipeline.config import load_config  # the resolved settings are kept and load back as they ran

    ran = load_config(out / "config.yaml")
    assert ran.coarse.model.channels == [4, 8, 16] and ran.train.uif.refresh_every == 1 and ran.coarse.train.epochs == 2
    assert main([*args, "--set", "coarse.train.epochs=3", "--resume"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epoch"] == 3 and [m["epoch"] for m in summary["metrics"]] == [1, 2, 3]
    # a different model config cannot resume from these checkpoints
    assert main([*args, "--set", "coarse.train.epochs=4", "--set", "coarse.model.channels=[4,8,32]", "--resume"]) == 2


def test_train_fine_with_roi_jitter_and_export(work: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SEGPIPE_PROGRESS", "0")
    rc = main(["train", "fine", "--work", str(work), "--set", "fine.model.channels=[4,8,16]",
               "--set", "fine.train.epochs=2", "--set", "fine.roi_jitter_mm=40", "--set", "fine.roi_jitter_p=1.0",
               "--export", str(tmp_path / "w"), "--fp16", *TINY])
    assert rc == 0
    import torch

    from pipeline.training.export import load_stage

    model, info = load_stage(tmp_path / "w" / "fine.safetensors")
    assert info["dtype"] == "float16" and info["modalities"] == ["ct"] and info["task"] == "flare"
    with torch.no_grad():
        assert model(torch.zeros(1, 1, *info["sample_size"])).shape == (1, 14, *info["sample_size"])


def test_bad_override_is_one_line_error(work: Path, capsys) -> None:
    assert main(["train", "fine", "--work", str(work), "--set", "train.optimizer=adam"]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.optimizer" in err and "\n" not in err


def test_coarse_modality_dropout_comes_from_the_config() -> None:
    """`segpipe train coarse` on BraTS: `coarse.modality_dropout` sets the loader that drops modalities."""
    import numpy as np

    from coarse_seg.train import stage_spec
    from pipeline.config import validate_config
    from pipeline.tasks import get_task
    from pipeline.training.data import MemorySample, MemorySource

    cfg = validate_config({"task": {"name": "brats"}, "coarse": {"modality_dropout": 1.0}}, "test")
    spec = stage_spec(cfg, get_task("brats"))
    assert spec.info["modality_dropout"] == 1.0
    image = np.ones((4, 2, 2, 2), np.float32)
    source = MemorySource({"c": MemorySample(image, None, np.ones(4, bool))}, {"train": ["c"]})
    seen = set()
    for seed in range(300):
        sample = spec.loader(source, "c", seed)
        kept = sample.modality_mask
        assert kept.any()  # a non-empty subset, the others zeroed
        assert (sample.image[~kept] == 0).all() and (sample.image[kept] == 1).all()
        seen.add(tuple(bool(v) for v in kept))
    assert len(seen) == 15  # train.modality_subsets uniform (default): the full set is one of the 15
    assert source.load("c").modality_mask.all() and (source.load("c").image == 1).all()  # the source is untouched
    cfg = validate_config({"task": {"name": "brats"}, "coarse": {"modality_dropout": 1.0},
                           "train": {"modality_subsets": "by_size"}}, "test")
    spec = stage_spec(cfg, get_task("brats"))
    assert spec.info["modality_subsets"] == "by_size"
    assert all(1 <= spec.loader(source, "c", seed).modality_mask.sum() < 4 for seed in range(50))  # strict subsets
    assert stage_spec(validate_config({"task": {"name": "brats"}}, "t"), get_task("brats")).loader is None
