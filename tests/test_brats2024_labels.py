"""BraTS 2024+ post-treatment glioma: label 4 = resection cavity (RC) under the `brats2024`
label convention, through prepare, train (class count), predict and submit; under the 2023
convention a label 4 is a one-line error naming the case, never merged into another label."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from predict_fixtures import make_random_weights
from prepare_fixtures import brats_case, save
from test_prepare_layouts import prepare, report

from pipeline.samples import SampleStore
from pipeline.submission.contract import check_case, label_set
from pipeline.tasks import get_task

GEO = {"spacing": (1.0, 1.0, 1.0), "direction": np.diag([-1.0, -1.0, 1.0]), "origin": (0.0, -239.0, 0.0)}


def _post_treatment_case(root, cid="BraTS-GLI-00007-100"):
    mods, label = brats_case()
    cavity = np.zeros_like(label, bool)
    cavity[2:6, 3:8, 3:8] = True
    label[cavity & (label == 0)] = 4
    for m, tag in (("t1ce", "t1c"), ("t2", "t2w"), ("flair", "t2f")):
        save(mods[m], root / cid / f"{cid}-{tag}.nii.gz", **GEO)
    save(label, root / cid / f"{cid}-seg.nii.gz", **GEO)
    return int((label == 4).sum())


def test_label_4_under_the_2023_convention_is_a_one_line_error(tmp_path):
    _post_treatment_case(tmp_path / "data")
    assert prepare(tmp_path / "data", tmp_path / "work", "--set", "task.name=brats", "--strict") == 1
    (failed,) = report(tmp_path / "work")["failed"]
    assert failed["case"] == "BraTS-GLI-00007-100" and "\n" not in failed["reason"]
    assert "label values [4]" in failed["reason"] and "task.label_convention: brats2024" in failed["reason"]


def test_brats2024_prepares_the_cavity_as_label_4(tmp_path, capsys):
    n_cavity = _post_treatment_case(tmp_path / "data")
    assert prepare(tmp_path / "data", tmp_path / "work", "--set", "task.name=brats",
                   "--set", "task.label_convention=brats2024", "--strict") == 0
    store = SampleStore(tmp_path / "work")
    rec = store.record("BraTS-GLI-00007-100")
    assert rec["label_convention"] == "brats-2024" and rec["label_map"]["4"] == 4
    assert rec["label_voxels"]["4"] == n_cavity
    assert 4 in set(np.unique(store.load("BraTS-GLI-00007-100", "fine").label).tolist())
    # the training class count follows the convention (what `segpipe train` builds the nets with)
    assert get_task("brats", "brats2024").num_classes == 5 and get_task("brats", "2023").num_classes == 4
    from pipeline.cli import main

    assert main(["train", "coarse", "--work", str(tmp_path / "work"), "--config", "brats",
                 "--set", "task.label_convention=brats2024", "--dry-run"]) == 0
    assert "'num_classes': 5" in capsys.readouterr().out


def test_brats2024_weights_predict_and_submit_label_4(tmp_path):
    from test_predict_modes import brats_case as input_case

    from pipeline.config import PredictSection
    from pipeline.inference.runner import run_predict

    weights = make_random_weights(tmp_path / "w" / "brats_rc", task="brats", coarse_size=(16, 16, 16),
                                  fine_size=(16, 16, 16))
    # a 5-class model: rewrite the stage files as trained under brats2024 (random weights, 5 outputs)
    import json

    import torch
    from safetensors.torch import save_file

    from pipeline.training.export import build_stage_model
    from pipeline.weights import load_weights, write_manifest

    for stage in ("coarse", "fine"):
        info = json.loads((weights / f"{stage}.json").read_text())
        info["model"]["num_classes"] = info["num_classes"] = 5
        torch.manual_seed(1)
        model = build_stage_model(stage, info["model"])
        with torch.no_grad():  # bias the cavity class so that random weights actually emit it
            for name, p in model.named_parameters():
                if name.endswith("bias") and p.shape == (5,):
                    p[4] += 5.0
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights / f"{stage}.safetensors"))
        (weights / f"{stage}.json").write_text(json.dumps(info))
    manifest = json.loads((weights / "manifest.json").read_text())
    write_manifest(weights, name="brats_rc", task="brats", preprocessing=manifest["preprocessing"])
    loaded = load_weights(weights, "cpu")
    assert loaded.manifest["label_convention"] == "brats2024" and loaded.manifest["labels"]["4"] == "resection_cavity"

    input_case(tmp_path / "in", "BraTS-GLI-00008-100")
    result = run_predict(tmp_path / "in", tmp_path / "out",
                         PredictSection(weights=weights, device="cpu", label_convention="brats2024",
                                        postprocess={"default": {"mode": "none"}}))
    assert result.written == ["BraTS-GLI-00008-100"]
    pred = tmp_path / "out" / "BraTS-GLI-00008-100.nii.gz"
    values = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(pred)))).tolist())
    assert 4 in values and values <= {0, 1, 2, 3, 4}
    assert label_set("brats", "brats2024") == {0, 1, 2, 3, 4}
    assert check_case(pred, None, label_set("brats", "brats2024")) is None
    reason = check_case(pred, None, label_set("brats", "2023"))
    assert reason is not None and "labels [4]" in reason
